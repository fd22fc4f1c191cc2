"""The run machinery, the same files in both folders; it imports nothing of the method (the space is passed in)."""
