"""One module per ``dataset`` option: its reader(s) and its DataModule (``ddpm_lab.data`` exports them)."""
