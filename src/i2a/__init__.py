"""Image-to-audio study: SpecVQGAN on VAS with swappable frame-feature backbones."""
