"""finescope's benchmarks (`make bench`, ``python -m benchmarks``); not part of the package."""
