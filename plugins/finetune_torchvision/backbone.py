"""A torchvision classification network cut at its final classification layer.

recognite's rule finds that layer: the model's last ``nn.Linear``, or the last ``Linear`` of a final
``nn.Sequential``. What sits between the features and that layer is kept (VGG's two hidden Linear
layers, MobileNetV3's pre-classifier, ConvNeXt's LayerNorm, ...). Parameter names stay torchvision's
(``layer4.2.conv3.weight``), so ``freeze`` prefixes read like the torchvision model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from finetune.backbone import MAP, TOKENS, Backbone, Features
from finetune.preprocessing import ImagePreprocessor, check_image_batch


@dataclass(frozen=True)
class Family:
    """How one torchvision family computes features and pools them."""

    key: str
    body: tuple[str, ...]          # children applied in order to get unpooled features
    head: str | None               # child holding the final classifier (None: SqueezeNet's conv classifier)
    own_pool: str = 'avg'          # 'avg' global mean | 'child' the model's avgpool | 'in_head' | 'cls'
    keep_neck_with_pooler: bool = True
    neck_4d: bool = False          # neck expects (N, C, 1, 1) (ConvNeXt's LayerNorm2d)
    neck_extra: tuple[str, ...] = ()  # children applied before the head's residue (GoogLeNet's dropout)
    post: str | None = None        # 'relu' after the body (DenseNet)
    transform_input: bool = False  # GoogLeNet / Inception v3 re-normalize pretrained inputs
    layout: str = MAP
    architecture: str = 'cnn'
    fixed_size: bool = False       # the network accepts only its build size (ViT, MaxViT)
    label: str = ''


_RESNET = ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4')
FAMILIES = {
    'alexnet': Family('alexnet', ('features',), 'classifier', own_pool='child', keep_neck_with_pooler=False,
                      label='AlexNet'),
    'vgg': Family('vgg', ('features',), 'classifier', own_pool='child', keep_neck_with_pooler=False,
                  label='VGG'),
    'resnet': Family('resnet', _RESNET, 'fc', label='ResNet'),
    'resnext': Family('resnext', _RESNET, 'fc', label='ResNeXt'),
    'wide_resnet': Family('wide_resnet', _RESNET, 'fc', label='Wide ResNet'),
    'regnet': Family('regnet', ('stem', 'trunk_output'), 'fc', label='RegNet'),
    'densenet': Family('densenet', ('features',), 'classifier', post='relu', label='DenseNet'),
    'efficientnet_v2': Family('efficientnet_v2', ('features',), 'classifier', label='EfficientNetV2'),
    'efficientnet': Family('efficientnet', ('features',), 'classifier', label='EfficientNet'),
    'mobilenet_v2': Family('mobilenet_v2', ('features',), 'classifier', label='MobileNetV2'),
    'mobilenet_v3': Family('mobilenet_v3', ('features',), 'classifier', label='MobileNetV3'),
    'mnasnet': Family('mnasnet', ('layers',), 'classifier', label='MNASNet'),
    'shufflenet_v2': Family('shufflenet_v2', ('conv1', 'maxpool', 'stage2', 'stage3', 'stage4', 'conv5'), 'fc',
                            label='ShuffleNetV2'),
    'squeezenet': Family('squeezenet', ('features',), None, label='SqueezeNet'),
    'convnext': Family('convnext', ('features',), 'classifier', neck_4d=True, label='ConvNeXt'),
    'googlenet': Family('googlenet', ('conv1', 'maxpool1', 'conv2', 'conv3', 'maxpool2', 'inception3a',
                                      'inception3b', 'maxpool3', 'inception4a', 'inception4b', 'inception4c',
                                      'inception4d', 'inception4e', 'maxpool4', 'inception5a', 'inception5b'),
                        'fc', neck_extra=('dropout',), transform_input=True, label='GoogLeNet'),
    'inception': Family('inception', ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'maxpool1',
                                      'Conv2d_3b_1x1', 'Conv2d_4a_3x3', 'maxpool2', 'Mixed_5b', 'Mixed_5c',
                                      'Mixed_5d', 'Mixed_6a', 'Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e',
                                      'Mixed_7a', 'Mixed_7b', 'Mixed_7c'),
                        'fc', neck_extra=('dropout',), transform_input=True, label='Inception v3'),
    'swin_v2': Family('swin_v2', ('features', 'norm', 'permute'), 'head', architecture='transformer',
                      label='Swin Transformer V2'),
    'swin': Family('swin', ('features', 'norm', 'permute'), 'head', architecture='transformer',
                   label='Swin Transformer'),
    'maxvit': Family('maxvit', ('stem', 'blocks'), 'classifier', own_pool='in_head', architecture='transformer',
                     fixed_size=True, label='MaxViT'),
    'vit': Family('vit', ('conv_proj', 'encoder'), 'heads', own_pool='cls', layout=TOKENS,
                  architecture='transformer', fixed_size=True, label='Vision Transformer'),
}


def family_of(name: str) -> Family | None:
    """The family of torchvision model `name` (longest matching prefix), or None if unknown."""
    for key in sorted(FAMILIES, key=len, reverse=True):
        if name == key or name.startswith(key + '_') or name.startswith(key) and name[len(key):][:1].isdigit():
            return FAMILIES[key]
    return None


def final_linear(model: nn.Module, family: Family) -> tuple[nn.Module | None, nn.Linear | None]:
    """recognite's rule: (the head child, its final Linear); the Linear is None for SqueezeNet."""
    if family.head is None:
        return None, None
    head = getattr(model, family.head)
    if isinstance(head, nn.Linear):
        return head, head
    if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
        return head, head[-1]
    raise TypeError(f'{type(model).__name__}.{family.head} is neither a Linear nor a Sequential ending in one')


_POOL_LIKE = (nn.AdaptiveAvgPool2d, nn.Flatten)


#: labeled data: recognite's recipe (a cosine classifier, softmax cross-entropy) measured better than batch-hard
#: triplets for image backbones (benchmarks/bench_recipes.py: EfficientNet-Lite0 on Fashion-MNIST, pretrained
#: and random, held-out items and classes, two seeds; ResNet-18 from random weights), see the README
IMAGE_DEFAULT_LOSSES = {'labeled': 'NormalizedSoftmaxLoss'}
#: CNNs fine-tuned at 3e-4 beat 1e-4 and 3.3e-5 in the same runs; transformers keep the core's 1e-4 (unmeasured)
CNN_LEARNING_RATE = 3e-4


class TorchvisionBackbone(Backbone):
    """Features, own pooling and the layers up to the removed classifier of one torchvision model."""

    packages = ('torchvision',)
    default_losses = IMAGE_DEFAULT_LOSSES

    modality = 'image'

    def __init__(self, name: str, model: nn.Module, family: Family, preprocess: dict,
                 own_dim: int = 0, pooled_dim: int = 0):
        super().__init__()
        self.model_name, self.family = name, family
        self.layout = family.layout
        self.default_learning_rate = CNN_LEARNING_RATE if family.architecture == 'cnn' else None
        self.use_transform_input = family.transform_input and bool(getattr(model, 'transform_input', False))
        for child in family.body:
            self.add_module(child, getattr(model, child))
        if family.key == 'vit':
            self.class_token = model.class_token
            self.patch_size = model.patch_size
        if family.own_pool == 'child':
            self.avgpool = model.avgpool
        for child in family.neck_extra:
            self.add_module(child, getattr(model, child))
        head, linear = final_linear(model, family)
        if isinstance(head, nn.Sequential):  # keep torchvision's indices: classifier.0, classifier.3, ...
            self.add_module(family.head, nn.Sequential(*list(head)[:-1]))
        for module in self._neck_modules(after_our_pooler=False):
            if getattr(module, 'inplace', False):  # an in-place Dropout would clobber GeM's saved output
                module.inplace = False
        self.own_dim = own_dim or (linear.in_features if linear is not None else 0)
        self.pooled_dim = pooled_dim
        self.image_size = preprocess['image_size']
        self.preprocessor = ImagePreprocessor(**preprocess)

    # -------------------------------------------------------------- pieces
    def _neck_modules(self, after_our_pooler: bool) -> list[nn.Module]:
        mods = [getattr(self, n) for n in self.family.neck_extra]
        if self.family.head is not None and isinstance(getattr(self, self.family.head, None), nn.Sequential):
            residue = list(getattr(self, self.family.head))
            if after_our_pooler:  # MaxViT's head starts with its own pooling: our pooler replaced it
                while residue and isinstance(residue[0], _POOL_LIKE) and not self.family.neck_4d:
                    residue.pop(0)
            mods += residue
        return mods

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        # pretrained GoogLeNet / Inception v3 expect inputs scaled to [-1, 1]: undo ImageNet normalization
        scale = x.new_tensor((0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5)).view(1, 3, 1, 1)
        shift = x.new_tensor(((0.485 - 0.5) / 0.5, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 0.5)).view(1, 3, 1, 1)
        return x * scale + shift

    def forward(self, batch: torch.Tensor) -> Features:
        x = batch
        if self.use_transform_input:
            x = self._transform_input(x)
        if self.family.key == 'vit':
            n = x.shape[0]
            x = self.conv_proj(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
            return Features(self.encoder(x))
        for child in self.family.body:
            module = getattr(self, child)
            if isinstance(module, nn.ModuleList):
                for block in module:
                    x = block(x)
            else:
                x = module(x)
        if self.family.post == 'relu':
            x = torch.relu(x)
        return Features(x)

    @staticmethod
    def _run(mods: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
        for m in mods:
            x = m(x)
        return x

    def pool_own(self, features: Features) -> torch.Tensor:
        x = features.tensor
        own = self.family.own_pool
        if own == 'cls':
            x = x[:, 0]
        elif own == 'child':
            x = self.avgpool(x).flatten(1)
        elif own == 'avg':
            x = x.mean(dim=(2, 3), keepdim=self.family.neck_4d)
        return self._run(self._neck_modules(after_our_pooler=False), x)

    def after_pooler(self, pooled: torch.Tensor) -> torch.Tensor:
        if not self.family.keep_neck_with_pooler:
            return pooled
        if self.family.neck_4d:
            pooled = pooled[:, :, None, None]
        return self._run(self._neck_modules(after_our_pooler=True), pooled)

    def preprocess(self, items):
        return self.preprocessor(items)

    def check_batch(self, batch) -> None:
        check_image_batch(batch, self.model_name, self.image_size if self.family.fixed_size else None)
