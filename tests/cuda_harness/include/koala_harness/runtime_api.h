// The host side of the fake CUDA runtime (libkoala_cudart_harness.so):
// error codes, memory, streams, events, graphs, devices. Names, numeric
// values and signatures follow the CUDA 13 runtime API, so code written for
// the real runtime compiles unchanged; behaviour is described in
// tests/cuda_harness/README.md.
#pragma once
#include <stddef.h>

// Exported from libkoala_cudart_harness.so. Default visibility on the
// declarations too: the plugin is built with -fvisibility=hidden, and must
// not take the runtime's data (the builtins) or class metadata for its own.
#define KOALA_HARNESS_API __attribute__((visibility("default")))

// The runtime API version the harness models (error 35's message names it).
#define CUDART_VERSION 13000

enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInsufficientDriver = 35,
    cudaErrorInvalidDeviceFunction = 98,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoKernelImageForDevice = 209,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorMisalignedAddress = 716,
    cudaErrorLaunchFailure = 719,
    cudaErrorNotSupported = 801,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorStreamCaptureUnmatched = 903,
    cudaErrorStreamCaptureImplicit = 906,
    cudaErrorCapturedEvent = 907,
    cudaErrorStreamCaptureWrongThread = 908,
    cudaErrorUnknown = 999,
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

enum cudaMemoryType {
    cudaMemoryTypeUnregistered = 0,
    cudaMemoryTypeHost = 1,
    cudaMemoryTypeDevice = 2,
    cudaMemoryTypeManaged = 3,
};

struct cudaPointerAttributes {
    enum cudaMemoryType type;
    int device;
    void *devicePointer;
    void *hostPointer;
    long reserved[8];
};

enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
};

enum cudaStreamCaptureStatus {
    cudaStreamCaptureStatusNone = 0,
    cudaStreamCaptureStatusActive = 1,
    cudaStreamCaptureStatusInvalidated = 2,
};

enum cudaGraphNodeType {
    cudaGraphNodeTypeKernel = 0x00,
    cudaGraphNodeTypeMemcpy = 0x01,
    cudaGraphNodeTypeMemset = 0x02,
    cudaGraphNodeTypeMemAlloc = 0x0a,
    cudaGraphNodeTypeMemFree = 0x0b,
    cudaGraphNodeTypeEventRecord = 0x07,
};

enum cudaDeviceAttr {
    cudaDevAttrMaxThreadsPerBlock = 1,
    cudaDevAttrMaxSharedMemoryPerBlock = 8,
    cudaDevAttrWarpSize = 10,
    cudaDevAttrMultiProcessorCount = 16,
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
    cudaDevAttrMemoryPoolsSupported = 115,
};

struct cudaFuncAttributes {
    size_t sharedSizeBytes;
    size_t constSizeBytes;
    size_t localSizeBytes;
    int maxThreadsPerBlock;
    int numRegs;
    int ptxVersion;
    int binaryVersion;
    int cacheModeCA;
    int maxDynamicSharedSizeBytes;
    int preferredShmemCarveout;
};

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    int warpSize;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    int major;
    int minor;
    int multiProcessorCount;
    int l2CacheSize;
};

// The CUDA 13 edge annotation of cudaStreamGetCaptureInfo (always empty:
// captures are single-stream chains).
typedef struct cudaGraphEdgeData_st {
    unsigned char from_port;
    unsigned char to_port;
    unsigned char type;
    unsigned char reserved[5];
} cudaGraphEdgeData;

typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;
typedef struct CUgraph_st *cudaGraph_t;
typedef struct CUgraphExec_st *cudaGraphExec_t;
typedef struct CUgraphNode_st *cudaGraphNode_t;

#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02
#define cudaHostAllocDefault 0x00
#define cudaHostAllocPortable 0x01
#define cudaHostAllocMapped 0x02
#define cudaHostAllocWriteCombined 0x04
#define cudaMemAttachGlobal 0x01
#define cudaMemAttachHost 0x02

// Every entry is a static inline wrapper that passes the calling shared
// object's instance token to the exported implementation
// koala_harness_<name>: the real runtime keeps the last error per thread
// AND per runtime instance (the plugin links cudart statically, so its
// errors never reach the test program's cudaGetLastError), and the one
// harness library tells the instances apart by these tokens (one per
// shared object: hidden visibility).
__attribute__((visibility("hidden"))) inline char koala_harness_instance = 0;

#define KOALA_HARNESS_UNPAREN(...) __VA_ARGS__
#define KOALA_HARNESS_ENTRY(name, params, args)                                                  \
    extern "C" KOALA_HARNESS_API cudaError_t koala_harness_##name(const void *instance,          \
                                                                  KOALA_HARNESS_UNPAREN params); \
    static inline cudaError_t name(KOALA_HARNESS_UNPAREN params) {                               \
        return koala_harness_##name(&koala_harness_instance, KOALA_HARNESS_UNPAREN args);        \
    }
#define KOALA_HARNESS_ENTRY0(name)                                                       \
    extern "C" KOALA_HARNESS_API cudaError_t koala_harness_##name(const void *instance); \
    static inline cudaError_t name(void) { return koala_harness_##name(&koala_harness_instance); }

extern "C" KOALA_HARNESS_API const char *cudaGetErrorString(cudaError_t error);
extern "C" KOALA_HARNESS_API const char *cudaGetErrorName(cudaError_t error);
KOALA_HARNESS_ENTRY0(cudaGetLastError)
KOALA_HARNESS_ENTRY0(cudaPeekAtLastError)
KOALA_HARNESS_ENTRY0(cudaDeviceSynchronize)
KOALA_HARNESS_ENTRY0(cudaDeviceReset)
KOALA_HARNESS_ENTRY(cudaGetDeviceCount, (int *count), (count))
KOALA_HARNESS_ENTRY(cudaDriverGetVersion, (int *driverVersion), (driverVersion))
KOALA_HARNESS_ENTRY(cudaRuntimeGetVersion, (int *runtimeVersion), (runtimeVersion))
KOALA_HARNESS_ENTRY(cudaSetDevice, (int device), (device))
KOALA_HARNESS_ENTRY(cudaGetDevice, (int *device), (device))
KOALA_HARNESS_ENTRY(cudaDeviceGetAttribute, (int *value, enum cudaDeviceAttr attr, int device),
                    (value, attr, device))
KOALA_HARNESS_ENTRY(cudaGetDeviceProperties, (struct cudaDeviceProp * prop, int device),
                    (prop, device))
KOALA_HARNESS_ENTRY(cudaMemGetInfo, (size_t * free, size_t *total), (free, total))
KOALA_HARNESS_ENTRY(cudaFuncGetAttributes, (struct cudaFuncAttributes * attr, const void *func),
                    (attr, func))
KOALA_HARNESS_ENTRY(cudaMalloc, (void **devPtr, size_t size), (devPtr, size))
KOALA_HARNESS_ENTRY(cudaMallocManaged,
                    (void **devPtr, size_t size, unsigned int flags = cudaMemAttachGlobal),
                    (devPtr, size, flags))
KOALA_HARNESS_ENTRY(cudaMallocHost, (void **ptr, size_t size), (ptr, size))
KOALA_HARNESS_ENTRY(cudaHostAlloc, (void **pHost, size_t size, unsigned int flags),
                    (pHost, size, flags))
KOALA_HARNESS_ENTRY(cudaFree, (void *devPtr), (devPtr))
KOALA_HARNESS_ENTRY(cudaMallocAsync, (void **devPtr, size_t size, cudaStream_t stream),
                    (devPtr, size, stream))
KOALA_HARNESS_ENTRY(cudaFreeAsync, (void *devPtr, cudaStream_t stream), (devPtr, stream))
KOALA_HARNESS_ENTRY(cudaFreeHost, (void *ptr), (ptr))
KOALA_HARNESS_ENTRY(cudaPointerGetAttributes,
                    (struct cudaPointerAttributes * attributes, const void *ptr), (attributes, ptr))
KOALA_HARNESS_ENTRY(cudaMemcpy,
                    (void *dst, const void *src, size_t count, enum cudaMemcpyKind kind),
                    (dst, src, count, kind))
KOALA_HARNESS_ENTRY(cudaMemcpyAsync,
                    (void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
                     cudaStream_t stream = 0),
                    (dst, src, count, kind, stream))
KOALA_HARNESS_ENTRY(cudaMemset, (void *devPtr, int value, size_t count), (devPtr, value, count))
KOALA_HARNESS_ENTRY(cudaMemsetAsync,
                    (void *devPtr, int value, size_t count, cudaStream_t stream = 0),
                    (devPtr, value, count, stream))
KOALA_HARNESS_ENTRY(cudaStreamCreate, (cudaStream_t * pStream), (pStream))
KOALA_HARNESS_ENTRY(cudaStreamCreateWithFlags, (cudaStream_t * pStream, unsigned int flags),
                    (pStream, flags))
KOALA_HARNESS_ENTRY(cudaStreamDestroy, (cudaStream_t stream), (stream))
KOALA_HARNESS_ENTRY(cudaStreamSynchronize, (cudaStream_t stream), (stream))
KOALA_HARNESS_ENTRY(cudaStreamQuery, (cudaStream_t stream), (stream))
KOALA_HARNESS_ENTRY(cudaStreamWaitEvent,
                    (cudaStream_t stream, cudaEvent_t event, unsigned int flags = 0),
                    (stream, event, flags))
KOALA_HARNESS_ENTRY(cudaEventCreate, (cudaEvent_t * event), (event))
KOALA_HARNESS_ENTRY(cudaEventCreateWithFlags, (cudaEvent_t * event, unsigned int flags),
                    (event, flags))
KOALA_HARNESS_ENTRY(cudaEventDestroy, (cudaEvent_t event), (event))
KOALA_HARNESS_ENTRY(cudaEventRecord, (cudaEvent_t event, cudaStream_t stream = 0), (event, stream))
KOALA_HARNESS_ENTRY(cudaEventSynchronize, (cudaEvent_t event), (event))
KOALA_HARNESS_ENTRY(cudaEventQuery, (cudaEvent_t event), (event))
KOALA_HARNESS_ENTRY(cudaEventElapsedTime, (float *ms, cudaEvent_t start, cudaEvent_t end),
                    (ms, start, end))
KOALA_HARNESS_ENTRY(cudaStreamBeginCapture, (cudaStream_t stream, enum cudaStreamCaptureMode mode),
                    (stream, mode))
KOALA_HARNESS_ENTRY(cudaStreamEndCapture, (cudaStream_t stream, cudaGraph_t *pGraph),
                    (stream, pGraph))
KOALA_HARNESS_ENTRY(cudaStreamIsCapturing,
                    (cudaStream_t stream, enum cudaStreamCaptureStatus *pCaptureStatus),
                    (stream, pCaptureStatus))
KOALA_HARNESS_ENTRY(cudaStreamGetCaptureInfo,
                    (cudaStream_t stream, enum cudaStreamCaptureStatus *captureStatus_out,
                     unsigned long long *id_out = 0, cudaGraph_t *graph_out = 0,
                     const cudaGraphNode_t **dependencies_out = 0,
                     const cudaGraphEdgeData **edgeData_out = 0, size_t *numDependencies_out = 0),
                    (stream, captureStatus_out, id_out, graph_out, dependencies_out, edgeData_out,
                     numDependencies_out))
KOALA_HARNESS_ENTRY(cudaThreadExchangeStreamCaptureMode, (enum cudaStreamCaptureMode * mode),
                    (mode))
KOALA_HARNESS_ENTRY(cudaGraphInstantiate,
                    (cudaGraphExec_t * pGraphExec, cudaGraph_t graph, unsigned long long flags = 0),
                    (pGraphExec, graph, flags))
KOALA_HARNESS_ENTRY(cudaGraphLaunch, (cudaGraphExec_t graphExec, cudaStream_t stream),
                    (graphExec, stream))
KOALA_HARNESS_ENTRY(cudaGraphGetNodes,
                    (cudaGraph_t graph, cudaGraphNode_t *nodes, size_t *numNodes),
                    (graph, nodes, numNodes))
KOALA_HARNESS_ENTRY(cudaGraphNodeGetType, (cudaGraphNode_t node, enum cudaGraphNodeType *pType),
                    (node, pType))
KOALA_HARNESS_ENTRY(cudaGraphDestroy, (cudaGraph_t graph), (graph))
KOALA_HARNESS_ENTRY(cudaGraphExecDestroy, (cudaGraphExec_t graphExec), (graphExec))

#undef KOALA_HARNESS_ENTRY
#undef KOALA_HARNESS_ENTRY0
#undef KOALA_HARNESS_UNPAREN

// The typed overloads of the real cuda_runtime.h.
template <class T>
inline cudaError_t cudaMalloc(T **devPtr, size_t size) {
    return cudaMalloc(reinterpret_cast<void **>(devPtr), size);
}
template <class T>
inline cudaError_t cudaMallocAsync(T **devPtr, size_t size, cudaStream_t stream) {
    return cudaMallocAsync(reinterpret_cast<void **>(devPtr), size, stream);
}
template <class T>
inline cudaError_t cudaMallocManaged(T **devPtr, size_t size,
                                     unsigned int flags = cudaMemAttachGlobal) {
    return cudaMallocManaged(reinterpret_cast<void **>(devPtr), size, flags);
}
template <class T>
inline cudaError_t cudaMallocHost(T **ptr, size_t size) {
    return cudaMallocHost(reinterpret_cast<void **>(ptr), size);
}
template <class T>
inline cudaError_t cudaHostAlloc(T **ptr, size_t size, unsigned int flags) {
    return cudaHostAlloc(reinterpret_cast<void **>(ptr), size, flags);
}
template <class T>
inline cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes *attr, T *entry) {
    return cudaFuncGetAttributes(attr, reinterpret_cast<const void *>(entry));
}

namespace koala_harness {

// Violations the harness has reported (each printed to stderr as
// "koala-harness: VIOLATION: ...") and not yet taken; resets the count. A
// process that exits with untaken violations exits with status 1: only the
// harness's own tests, which provoke them on purpose, take them.
KOALA_HARNESS_API int take_violations();

}  // namespace koala_harness
