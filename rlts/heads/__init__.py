"""Task heads on top of rlts.nn.SequenceModel."""
from rlts.heads.forecast import DLinear, ForecastStream, NaiveForecaster, RevIN, RevINStats, SequenceForecaster, forecast_loss, moving_average  # noqa: F401
from rlts.heads.classify import (SequenceClassifier, classification_loss, collate_unequal,  # noqa: F401
                                 nan_padded_lengths, predict_proba)
from rlts.heads.events import EventModel, LogNormalMixture, evaluate_events, event_loss  # noqa: F401
from rlts.heads.decision import DecisionAaren, DecisionModel, decision_loss  # noqa: F401
