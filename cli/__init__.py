"""The `vtnetmap` command (click). Installed as `vtnetmap_cli`."""
