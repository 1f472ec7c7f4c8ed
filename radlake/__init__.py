"""radlake: the user-facing package (the demo lake lives in radlake.demo)."""
