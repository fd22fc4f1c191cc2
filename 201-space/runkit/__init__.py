"""The run machinery around a search or training loop, the same files in both folders; it imports no module of the
method (the space and each folder's own flags are passed in)."""
