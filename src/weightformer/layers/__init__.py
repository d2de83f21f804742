"""Dynamic layers: weights W0 + dW(X) predicted from compressed global statistics, linear in the token count."""

from .attention import DynamicMLPWeights, attention_as_dynamic_mlp, attention_mlp_weights
from .dynamic_conv import CONV_PREDICTORS, DynamicDWConv2d, per_sample_depthwise_conv
from .dynamic_linear import LINEAR_PREDICTORS, DynamicLinear

__all__ = [
    "DynamicLinear",
    "DynamicDWConv2d",
    "LINEAR_PREDICTORS",
    "CONV_PREDICTORS",
    "per_sample_depthwise_conv",
    "attention_as_dynamic_mlp",
    "attention_mlp_weights",
    "DynamicMLPWeights",
]
