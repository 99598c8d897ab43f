"""Configuration of InternVLChatModel: a vision_config (InternViT), an llm_config, and how they are glued."""
from transformers import AutoConfig, PretrainedConfig

from .configuration_intern_vit import InternVisionConfig
from .configuration_internlm2 import InternLM2Config

try:  # the LLMs the course knows without extra modeling files
    from transformers import Phi3Config
except ImportError:  # pragma: no cover - very old transformers
    Phi3Config = None


def _llm_config_from_dict(llm_config: dict) -> PretrainedConfig:
    """Build the LLM's config class from its dict, chosen by architectures[0] (or model_type)."""
    llm_config = dict(llm_config)
    arch = (llm_config.get("architectures") or [""])[0]
    if arch == "InternLM2ForCausalLM" or llm_config.get("model_type") == "internlm2":
        return InternLM2Config(**llm_config)  # the course's own file, like the published checkpoints
    if arch == "Phi3ForCausalLM" or llm_config.get("model_type") == "phi3":
        return Phi3Config(**llm_config)
    model_type = llm_config.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"llm_config needs 'architectures' or 'model_type'; got architectures={arch!r}")
    return AutoConfig.for_model(model_type, **llm_config)


class InternVLChatConfig(PretrainedConfig):
    """InternVL2: InternViT (vision_config) -> pixel shuffle -> MLP projector -> LLM (llm_config)."""

    model_type = "internvl_chat"
    is_composition = True

    def __init__(
        self,
        vision_config=None,
        llm_config=None,
        use_backbone_lora=0,
        use_llm_lora=0,
        select_layer=-1,
        force_image_size=None,
        downsample_ratio=0.5,
        template=None,
        dynamic_image_size=False,
        use_thumbnail=False,
        ps_version="v1",
        min_dynamic_patch=1,
        max_dynamic_patch=6,
        **kwargs,
    ):
        kwargs.setdefault("tie_word_embeddings", False)  # the LLM decides; never tie across the wrapper
        super().__init__(**kwargs)
        if isinstance(vision_config, InternVisionConfig):
            self.vision_config = vision_config
        else:
            self.vision_config = InternVisionConfig(**(vision_config or {}))
        if isinstance(llm_config, PretrainedConfig):
            self.llm_config = llm_config
        else:
            self.llm_config = _llm_config_from_dict(llm_config or {"architectures": ["InternLM2ForCausalLM"]})
        self.use_backbone_lora = use_backbone_lora
        self.use_llm_lora = use_llm_lora
        self.select_layer = select_layer
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.dynamic_image_size = dynamic_image_size
        self.use_thumbnail = use_thumbnail
        self.ps_version = ps_version
        self.min_dynamic_patch = min_dynamic_patch
        self.max_dynamic_patch = max_dynamic_patch

    def to_dict(self):
        """Serialise, with the two sub-configs as nested dicts."""
        output = super().to_dict()
        output["vision_config"] = self.vision_config.to_dict()
        output["llm_config"] = self.llm_config.to_dict()
        output["model_type"] = self.__class__.model_type
        return output

    def to_diff_dict(self):
        """What save_pretrained writes: the changed top-level fields, but both sub-configs in full."""
        output = super().to_diff_dict()
        output["vision_config"] = self.vision_config.to_dict()
        output["llm_config"] = self.llm_config.to_dict()
        return output


# save_pretrained copies this file next to config.json
InternVLChatConfig.register_for_auto_class()
