"""The published MusicGen checkpoints, read into our own modules. A tiny run never executes this package;
read it after the core (README, "The real MusicGen").

    pretrained.py   the files of a facebook/musicgen-* folder (safetensors read by hand) → our codec and LM
    t5.py           the frozen T5 text encoder of the published models, with its SentencePiece tokenizer
"""
