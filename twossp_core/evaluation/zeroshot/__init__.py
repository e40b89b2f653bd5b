"""Zero-shot accuracy on the paper's six tasks (WinoGrande, ARC-Easy, ARC-Challenge, HellaSwag, PIQA, MMLU), scored
as lm-eval-harness 0.4 scores them, from local task files or the Hugging Face Hub.

- the task names (`paper` = the six) are twossp_core/plan/tasks.py's; registry: the module that reads each task;
  items: what a task is made of; one module per task reads it (arc, piqa, winogrande, hellaswag, mmlu) and
  sources finds its files where the run's TaskData says (per-task paths, a directory of task folders, Hub);
- scoring: lm-eval's tokenization and batched log-likelihoods with shared contexts; metrics: acc, acc_norm,
  standard errors; evaluate: the run-level API and the report block;
- reference: lm-eval-harness itself on the same local files (the check; needs the zeroshot extra).
"""
