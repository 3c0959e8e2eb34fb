"""Skip-aware fine-tuning (``skipdecode train``). The data it reads (examples, the prompt
template, held-out splits) is skipdecode/data.py's, shared with evaluation and calibration."""
