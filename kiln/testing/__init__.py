"""Helpers for testing Kiln against external suites (ONNX's node test cases)."""
