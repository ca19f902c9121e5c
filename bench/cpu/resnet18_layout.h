/*
 * The parameter layout of the CIFAR-10 ResNet-18 the KOALA paper trains
 * (the common "kuangliu" variant: 3x3 stem conv without max-pool, four stages
 * of two BasicBlocks, 1x1 projection shortcuts where the shape changes,
 * bias-free convolutions followed by BatchNorm, a 512x10 linear head).
 *
 * One row per framework parameter tensor, in model.parameters() order, which
 * is the block order KOALA sees. 62 tensors, 11,173,962 parameters.
 */
#ifndef KOALA_BENCH_RESNET18_LAYOUT_H
#define KOALA_BENCH_RESNET18_LAYOUT_H

#include <stddef.h>

typedef struct layout_tensor {
    const char *name;
    size_t dims[4]; /* unused trailing dims are 0 */
} layout_tensor;

#define CONV(name, out, in, k) {name, {out, in, k, k}}
#define BN(name, c) {name ".weight", {c, 0, 0, 0}}, {name ".bias", {c, 0, 0, 0}}

static const layout_tensor resnet18_cifar10[] = {
    CONV("conv1.weight", 64, 3, 3), BN("bn1", 64),
    /* layer1: 64 -> 64, stride 1, identity shortcuts */
    CONV("layer1.0.conv1.weight", 64, 64, 3), BN("layer1.0.bn1", 64),
    CONV("layer1.0.conv2.weight", 64, 64, 3), BN("layer1.0.bn2", 64),
    CONV("layer1.1.conv1.weight", 64, 64, 3), BN("layer1.1.bn1", 64),
    CONV("layer1.1.conv2.weight", 64, 64, 3), BN("layer1.1.bn2", 64),
    /* layer2: 64 -> 128, stride 2, projection shortcut in block 0 */
    CONV("layer2.0.conv1.weight", 128, 64, 3), BN("layer2.0.bn1", 128),
    CONV("layer2.0.conv2.weight", 128, 128, 3), BN("layer2.0.bn2", 128),
    CONV("layer2.0.shortcut.0.weight", 128, 64, 1), BN("layer2.0.shortcut.1", 128),
    CONV("layer2.1.conv1.weight", 128, 128, 3), BN("layer2.1.bn1", 128),
    CONV("layer2.1.conv2.weight", 128, 128, 3), BN("layer2.1.bn2", 128),
    /* layer3: 128 -> 256 */
    CONV("layer3.0.conv1.weight", 256, 128, 3), BN("layer3.0.bn1", 256),
    CONV("layer3.0.conv2.weight", 256, 256, 3), BN("layer3.0.bn2", 256),
    CONV("layer3.0.shortcut.0.weight", 256, 128, 1), BN("layer3.0.shortcut.1", 256),
    CONV("layer3.1.conv1.weight", 256, 256, 3), BN("layer3.1.bn1", 256),
    CONV("layer3.1.conv2.weight", 256, 256, 3), BN("layer3.1.bn2", 256),
    /* layer4: 256 -> 512 */
    CONV("layer4.0.conv1.weight", 512, 256, 3), BN("layer4.0.bn1", 512),
    CONV("layer4.0.conv2.weight", 512, 512, 3), BN("layer4.0.bn2", 512),
    CONV("layer4.0.shortcut.0.weight", 512, 256, 1), BN("layer4.0.shortcut.1", 512),
    CONV("layer4.1.conv1.weight", 512, 512, 3), BN("layer4.1.bn1", 512),
    CONV("layer4.1.conv2.weight", 512, 512, 3), BN("layer4.1.bn2", 512),
    /* classifier */
    {"linear.weight", {10, 512, 0, 0}}, {"linear.bias", {10, 0, 0, 0}},
};

#undef CONV
#undef BN

enum {
    RESNET18_TENSORS = (int)(sizeof resnet18_cifar10 / sizeof resnet18_cifar10[0]),
    RESNET18_EXPECTED_TENSORS = 62
};
#define RESNET18_EXPECTED_PARAMS ((size_t)11173962)

static size_t layout_numel(const layout_tensor *t) {
    size_t n = 1;
    for (int d = 0; d < 4 && t->dims[d] != 0; ++d) n *= t->dims[d];
    return n;
}

#endif
