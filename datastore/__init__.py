"""Torch-free data on disk shared by the capture booth, the rating station and the trainer.

* :mod:`datastore.capture_format` -- the capture dataset layout (manifest, records, ids);
* :mod:`datastore.capture_store` -- crash-safe writing, checking and participant deletion (``run.py dataset``);
* :mod:`datastore.jsonl` -- the one durable JSON Lines appender (capture manifest, deletion log, ratings);
* :mod:`datastore.cache` -- the decoded-dataset cache folder and purging a participant's decoded copies;
* :mod:`datastore.images` -- decoding dataset images by content.

Imports nothing of AVGAN's but :mod:`engine.errors` (tests/test_imports.py checks it), and never torch.
"""
