"""What the tests share: the plain-torch reference, the multi-process harnesses, fixtures and helpers."""
