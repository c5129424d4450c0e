"""Corpus preparation: text -> a tokenizer and token shards that `lm` trains on.

`python -m raytrain_llm.prepare --input ... --out DIR` (see __main__.py). Layers: sources.py finds
and reads input files, documents.py turns a file's bytes into documents and picks each one's split,
encode.py tokenizes one file (the unit of parallel work), writer.py writes shards by the one
layout rule, pipeline.py runs the whole preparation (local processes feed the driver, which writes
the shards), and ray_runner.py runs it on Ray instead, where the workers write part files and then
the shards (parts.py: the file work of those two phases). The output is byte-identical whatever
ran the work.
"""
