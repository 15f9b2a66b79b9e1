"""Training machinery: the trainer, what a step computes (objectives), the schedule, where a run executes
(runtime), predictions and their metrics, fitting a covariance to a trained model."""
