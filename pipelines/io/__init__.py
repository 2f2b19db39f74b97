"""Files every stage reads or writes: atomic writes, WebDataset shards, the curated manifest.

Nothing here knows about models; every stage package imports from here instead of re-implementing
tar members, manifests or write-then-rename.
"""
