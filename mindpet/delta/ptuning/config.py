"""The config of P-tuning v1: the prompt's length and width, and its encoder."""
import dataclasses

from mindpet.delta.base.prompt_config import VirtualTokenConfig
from mindpet.delta.ptuning.layer import DEFAULT_LSTM_DROPOUT, DEFAULT_LSTM_LAYERS, PromptEncoder, \
    check_encoder_arguments


@dataclasses.dataclass
class PTuningConfig(VirtualTokenConfig):
    """P-tuning v1 (:class:`~mindpet.delta.PromptEncoder`): virtual tokens re-parameterised by an MLP or an LSTM.

    The fields follow PEFT's ``PromptEncoderConfig``.

    Args:
{virtual_token_arguments}
        encoder_hidden_size (int): hidden size of the MLP, or of each direction of the LSTM; required.
        encoder_reparameterization_type (str): ``"MLP"`` or ``"LSTM"``, case-insensitive; stored in capitals.
            Default: ``"MLP"``.
        encoder_num_layers (int): LSTM layers; the MLP accepts only the default. Default: ``2``.
        encoder_dropout (float): dropout between LSTM layers, in [0, 1); the MLP accepts only the default.
            Default: ``0.0``.

    Raises:
        TypeError: a field of the wrong type, as :class:`~mindpet.delta.PromptEncoder` raises for the same argument;
            and as :class:`~mindpet.delta.base.prompt_config.VirtualTokenConfig`.
        ValueError: a bad value, as :class:`~mindpet.delta.PromptEncoder` raises for it; and as
            :class:`~mindpet.delta.base.prompt_config.VirtualTokenConfig`.

    Examples:
        >>> from mindpet import PTuningConfig
        >>> config = PTuningConfig(num_virtual_tokens=4, token_dim=8, encoder_hidden_size=16,
        ...                        encoder_reparameterization_type="lstm")
        >>> config.encoder_reparameterization_type, PTuningConfig.from_dict(config.to_dict()) == config
        ('LSTM', True)
        >>> config.make_cell()(2).shape
        (2, 4, 8)
    """

    method = "ptuning"

    encoder_hidden_size: int = None
    encoder_reparameterization_type: str = "MLP"
    encoder_num_layers: int = DEFAULT_LSTM_LAYERS
    encoder_dropout: float = DEFAULT_LSTM_DROPOUT

    def validate(self):
        super().validate()
        (self.encoder_hidden_size, self.encoder_reparameterization_type, self.encoder_num_layers,
         self.encoder_dropout) = check_encoder_arguments(self.encoder_hidden_size, self.encoder_reparameterization_type,
                                                         self.encoder_num_layers, self.encoder_dropout,
                                                         type(self).__name__)
        return self

    def make_cell(self):
        """The :class:`~mindpet.delta.PromptEncoder` this config describes (parameters float32, Dense layers
        computing in float16, the cell's defaults).

        Returns:
            PromptEncoder.
        """
        self.validate()
        return PromptEncoder(self.num_virtual_tokens, self.token_dim, self.encoder_hidden_size,
                             encoder_reparameterization_type=self.encoder_reparameterization_type,
                             encoder_num_layers=self.encoder_num_layers, encoder_dropout=self.encoder_dropout)
