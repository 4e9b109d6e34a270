"""Files in and out: reading cut-outs, writing results and karyograms atomically, and the
batch runner behind ``vfinfer run``."""
