"""Administration: `vtnetmap attach`, `detach` (admin/attach.py), `status` (admin/status.py)
and the pins they share (admin/pins.py)."""
