"""Input data for training and evaluation, read without TensorFlow. In the order data flows:

sources            the dataset registry: config.dataset -> {split: random-access pairs}
numbers            the built-in number-words task (a TFDS builder), generated locally
parallel_text      your {split}.{language} text files as a TFDS builder
catalog            TFDS catalog translation datasets (wmt14_translate/de-en, ...)
vocabulary         one protocol, three vocabularies: words, SentencePiece, MarianMT's
tokenizer_training SentencePiece shared by both languages, trained deterministically
batching           tokenize (small splits); fixed-rows, padded and bucketed batches, lazy;
                   evaluation batches
token_store        a training split tokenized once, on disk, memory-mapped, shared by runs
packing            several pairs per row, with segment ids and positions; epochs packed per chunk
prefetch           the next batches built in a background thread, ahead of the train step
run_data           a config's training batches and evaluation splits, ready for the loop
"""
