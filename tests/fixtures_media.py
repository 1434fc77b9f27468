"""Media fixtures (real files, real ffmpeg)."""
