"""BPF programs: bcc compile/cache, the steering program, TC attachment."""
