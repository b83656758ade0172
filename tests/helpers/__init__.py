"""What several test files share (tests import these, never each other)."""
