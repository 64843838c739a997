"""Run directories: their layout (every file name, read and write), sweeps of runs, and the
progress display."""
