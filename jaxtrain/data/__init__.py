"""Corpus, cleaning, tokenizer, token shards (TFDS/ArrayRecord) and the Grain loader."""
