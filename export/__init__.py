"""Export: turn a trained model directory into a serving bundle (``docs/bundle-format.md``).

Needs torch (``protolm[export]``); it writes the format that ``core.bundle`` defines; ``service`` reads it.
"""
