"""Progressive DrNAS search in the DARTS space directly on ImageNet (DrNAS section 4).

The paper searches a 14-cell, 48-channel network (three stride-2 stem convs ending at 3C
channels) on 10 % of the ImageNet training images (weights) and 2.5 % (architecture),
both with random resized crops and flips, batch 512, lr 0.5 with a 5-epoch linear
warm-up, beta's gradient clipped to --grad_clip, partial channels k=6 then k=3, 7 then 4
ops per edge, 25 + 25 epochs, seed 0. Write the subsets once with
prepare_imagenet_subset.py, then:

    python prepare_imagenet_subset.py --imagenet /data/imagenet --out /data/imagenet_search
    torchrun --nproc_per_node 8 train_search_imagenet.py --data /data/imagenet_search
    python train_search_imagenet.py --data /data/imagenet_search --batch_size 64   # one GPU
    # CPU smoke run on a tiny folder tree (two processes, gloo):
    torchrun --nproc_per_node 2 train_search_imagenet.py --data tiny --image_size 32 --layers 5 \\
        --init_channels 8 --batch_size 8 --stage_epochs 1 1 --stage_k 4 2 --warmup_epochs 0 \\
        --max_steps 2 --device cpu --workers 0

`--data` holds `train/` (weights) and `val/` (architecture and the reported accuracy),
one sub-folder per class. The flags, run directory and resume are those of
train_search.py, with the ImageNet defaults above.

Several processes: under torchrun every process takes its own shard of both data
streams (`--batch_size` is the total, split evenly) and runs the same supernet. No DDP
wrapper: after each weight backward the weight gradients are averaged over the ranks
(one flat all-reduce), and after each architecture backward the beta gradients are
averaged the same way, so every rank takes identical SGD and Adam steps and keeps
identical weights and beta (checked and logged at the end of the run). A DDP wrapper
would fire its weight all-reduce hooks inside the architecture backward too, which needs
no weight gradient at all. Rank 0 alone logs and writes.
"""

import utils
from train_search import check_args, get_parser as search_parser, search


def get_parser():
    return search_parser(imagenet=True, description=__doc__)


@utils.exits_cleanly
def main(argv=None):
    args = get_parser().parse_args(argv)
    check_args(args)
    search(args, "train_search_imagenet", imagenet=True)


if __name__ == "__main__":
    main()
