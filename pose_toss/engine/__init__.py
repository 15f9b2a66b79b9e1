"""Training engine: stages and trainer, evaluation, method comparison."""

from pose_toss.engine.compare import METHODS, compare, method_config
from pose_toss.engine.evaluation import evaluate_checkpoint, metrics_from_predictions, predict_dataset
from pose_toss.engine.trainer import Trainer, TrainingDiverged, build_model_from_config, train

__all__ = ["METHODS", "Trainer", "TrainingDiverged", "build_model_from_config", "compare", "evaluate_checkpoint",
           "method_config", "metrics_from_predictions", "predict_dataset", "train"]
