"""DiStyleGAN: a ~2M-parameter class-conditional CIFAR-10 generator distilled black-box from a big teacher."""
