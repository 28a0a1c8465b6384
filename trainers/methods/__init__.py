"""SSL methods on one base (see base.py for the runner's interface); registry by name."""
from trainers.methods.base import (
    METHODS,
    Method,
    MethodConfig,
    SampleIds,
    build_method,
    ema_update,
    frozen_copy,
    group_hashes,
    parse_method_config,
    register_method,
    stochastic_layers,
)
from trainers.methods.barlow_twins import BarlowTwins, BarlowTwinsConfig
from trainers.methods.byol import BYOL, BYOLConfig
from trainers.methods.cpc_v2 import CPCV2, CPCV2Config
from trainers.methods.dino import DINO, DINOConfig
from trainers.methods.ibot import IBOT, IBOTConfig
from trainers.methods.moco_v2 import MoCoV2, MoCoV2Config
from trainers.methods.moco_v3 import MoCoV3, MoCoV3Config
from trainers.methods.moby import MoBY, MoBYConfig
from trainers.methods.queue import EmbeddingQueue
from trainers.methods.simclr import SimCLR, SimCLRConfig
from trainers.methods.simsiam import SimSiam, SimSiamConfig
from trainers.methods.sit import SiT, SiTConfig
from trainers.methods.swav import SwAV, SwAVConfig
from trainers.methods.vicreg import VICReg, VICRegConfig

__all__ = [
    "METHODS", "Method", "MethodConfig", "SampleIds", "build_method", "parse_method_config", "register_method",
    "ema_update", "frozen_copy", "group_hashes", "stochastic_layers", "EmbeddingQueue",
    "BarlowTwins", "BarlowTwinsConfig", "MoBY", "MoBYConfig", "VICReg", "VICRegConfig",
    "BYOL", "BYOLConfig", "CPCV2", "CPCV2Config", "DINO", "DINOConfig", "IBOT", "IBOTConfig", "MoCoV2", "MoCoV2Config",
    "MoCoV3", "MoCoV3Config",
    "SimCLR", "SimCLRConfig", "SimSiam", "SimSiamConfig", "SiT", "SiTConfig", "SwAV", "SwAVConfig",
]
