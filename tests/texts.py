"""The texts the suite's espeak-ng clips say (conftest's speech_wav and long_speech_wav), in a
module of their own so that bench/engine.py measures its word error rate on them too."""

SENTENCE = "Hello, how are you today? We are testing the transcription gateway."

LONG_SPEECH = " ".join([
    "The morning meeting started with a review of the quarterly numbers.",
    "Sales in the northern region grew by twelve percent, while the south stayed flat.",
    "The team agreed to move the product launch to the second week of March.",
    "Marketing will prepare a new campaign for the spring season.",
    "Engineering reported that the migration to the new servers is almost complete.",
    "Two open issues remain, and both should be fixed by Friday.",
    "Finally, everyone was reminded to submit their travel expenses before the end of the month.",
] * 4)
