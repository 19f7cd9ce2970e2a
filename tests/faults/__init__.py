"""The fault suite: injectors, a runner that yields one record per injection, and fuzzing."""
