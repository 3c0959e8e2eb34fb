"""Skip-aware fine-tuning (``skipdecode train``).

Importing this package stays light (no torch): evaluation and serving code import the prompt
template from here, ``from skipdecode.training import format_prompt``.
"""

from skipdecode.training.data import E2E_TEMPLATE, Example, format_prompt, load_examples, split_heldout

__all__ = ["E2E_TEMPLATE", "Example", "format_prompt", "load_examples", "split_heldout"]
