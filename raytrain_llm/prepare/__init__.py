"""Corpus preparation: text -> a tokenizer and token shards that `lm` trains on.

`python -m raytrain_llm.prepare --input ... --out DIR` (see __main__.py). Layers: sources.py finds
and reads input files, documents.py turns a file's bytes into documents and picks each one's split,
encode.py tokenizes one file (the unit of parallel work), writer.py writes shards and the
manifest, pipeline.py runs the whole preparation with local processes, and ray_runner.py runs the
per-file work as Ray Data tasks instead. Both runners hand the driver the same per-file results in
file order, and the driver alone writes: the output is byte-identical whatever ran the work.
"""
