"""Text in: finding, decoding and batching the corpus (corpus.py), encoding it to ids in
bounded memory and caching them (tokens.py), and the synthetic recall corpus (recall.py)."""
