"""Upper bounds shared by the request schema and the method options (torch-free).

They refuse requests whose cost no worker could meet (a window count in the millions, say); a service can set
lower caps on top of them.
"""

MAX_WINDOWS = 4096
MAX_EVAL_WINDOWS = 100_000
MAX_SEQ_LEN = 131_072
MAX_DOCUMENT_INDEX = 10**9
MAX_SEED = 2**63 - 1
MAX_SWEEP_MODELS = 16  # models one sweep compares
MAX_TASK_LIMIT = 1_000_000  # items per zero-shot task (the largest task, MMLU, has 14,042)
