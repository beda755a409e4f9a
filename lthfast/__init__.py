"""lthfast: a high-throughput trainer for lottery-ticket and data-diet research.

Reproduces "Lottery Tickets on a Data Diet" (Paul et al., NeurIPS 2022) as reusable software:
datasets converted once to arrays + FFCV betons, a device-resident loader, one training loop that
trains K small networks as one packed model, IMP with rewinding, and EL2N / forgetting scores.

    lthfast imp --dataset digits --subset easy --size 256 --steps 20 --levels 3
"""

__version__ = "0.1.0"
