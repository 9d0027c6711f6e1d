"""What every method stands on: `cache.py` (the one model cache: loads, shares, places and evicts weights; open it
first), `hub.py` (hub files, offline-first), `video.py` (H.264 in and out), `errors.py` (messages meant for a person),
`checks.py` (request checks), `estimate.py` (how long a run will take; each method passes in its own work formula)
and `tiny.py` (the tiny profile's seeded builds). Nothing in `core` imports anything above it."""
