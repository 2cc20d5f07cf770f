"""Compiled kernels. Private: users reach them only through Python wrappers."""
