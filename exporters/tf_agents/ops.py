"""Which TensorFlow ops a TF-Agents save may run at import: an allow-list.

A policy computes: math, array, neural-network, control-flow, random-number, variable
and in-memory table ops. ``ALLOWED`` lists them by name (a fixed list: a new TensorFlow
op is refused until it is added here). Everything else is refused before the save is
loaded (``exporters.tf_agents.screen``); ``category`` names why for the ops known to
reach outside the process: files, Python, the network or other devices, the process
itself, or output streams (``tf.print`` can write to a file). TensorFlow's own
``is_stateful`` flag cannot decide this: ``ReadFile``, ``MatchingFiles`` and
``PyFuncStateless`` are registered as stateless.

Every op the TF-Agents 0.19 saves in tests/data use is in the list (a test checks it),
and so are the op families their networks can produce (convolutions, pooling, LSTM
cells and ``tf.while_loop`` unrolls, TFP's sampling and special functions).
"""

from __future__ import annotations

__all__ = ["ALLOWED", "category"]


def _names(*groups: str) -> frozenset[str]:
    return frozenset(name for group in groups for name in group.split())


_MATH = """
Abs AccumulateNV2 Acos Acosh Add AddN AddV2 All Angle Any ApproximateEqual ArgMax ArgMin
Asin Asinh Atan Atan2 Atanh BatchMatMul BatchMatMulV2 BatchMatMulV3 Betainc Bucketize Cast
Ceil ClipByValue Complex ComplexAbs Conj Cos Cosh Cross Cumprod Cumsum CumulativeLogsumexp
Digamma Div DivNoNan Equal Erf Erfc Erfinv EuclideanNorm Exp Expm1 Floor FloorDiv FloorMod
Greater GreaterEqual Igamma IgammaGradA Igammac Imag Inv InvGrad IsFinite IsInf IsNan Less
LessEqual Lgamma LinSpace Log Log1p LogicalAnd LogicalNot LogicalOr MatMul Max Maximum Mean
Min Minimum Mod Mul MulNoNan Ndtri Neg NextAfter NotEqual Polygamma Pow Prod Range Real
RealDiv Reciprocal ReciprocalGrad Rint Round Rsqrt RsqrtGrad SegmentMax SegmentMean
SegmentMin SegmentProd SegmentSum Select SelectV2 Sigmoid SigmoidGrad Sign Sin Sinh Sqrt
SqrtGrad Square SquaredDifference Sub Sum Tan Tanh TanhGrad TruncateDiv TruncateMod
UnsortedSegmentMax UnsortedSegmentMin UnsortedSegmentProd UnsortedSegmentSum Xdivy Xlog1py
Xlogy Zeta
BesselI0 BesselI0e BesselI1 BesselI1e BesselJ0 BesselJ1 BesselK0 BesselK0e BesselK1
BesselK1e BesselY0 BesselY1 Dawsn Expint FresnelCos FresnelSin Spence
BitwiseAnd BitwiseOr BitwiseXor Invert LeftShift PopulationCount RightShift
"""
_LINALG = """
BandedTriangularSolve Cholesky Eig Einsum LogMatrixDeterminant Lu MatrixDeterminant
MatrixExponential MatrixInverse MatrixLogarithm MatrixSolve MatrixSolveLs MatrixSquareRoot
MatrixTriangularSolve Qr SelfAdjointEigV2 Svd TridiagonalMatMul TridiagonalSolve
"""
_ARRAY = """
BatchToSpaceND Bitcast BroadcastArgs BroadcastGradientArgs BroadcastTo CheckNumerics
CheckNumericsV2 Concat ConcatOffset ConcatV2 ConjugateTranspose Const DepthToSpace Diag
DiagPart EnsureShape ExpandDims ExtractImagePatches Fill Fingerprint Gather GatherNd
GatherV2 Identity IdentityN InvertPermutation ListDiff LowerBound MatrixBandPart MatrixDiag
MatrixDiagPart MatrixDiagPartV2 MatrixDiagPartV3 MatrixDiagV2 MatrixDiagV3 MatrixSetDiag
MatrixSetDiagV2 MatrixSetDiagV3 MirrorPad OneHot OnesLike Pack Pad PadV2 Placeholder
PlaceholderWithDefault PreventGradient Rank Reshape Reverse ReverseSequence ReverseV2
ScatterNd Shape ShapeN Size Slice Snapshot SpaceToBatchND SpaceToDepth Split SplitV Squeeze
StopGradient StridedSlice StridedSliceGrad TensorScatterAdd TensorScatterMax
TensorScatterMin TensorScatterSub TensorScatterUpdate TensorStridedSliceUpdate Tile
Transpose Unique UniqueV2 UniqueWithCounts Unpack UnravelIndex UpperBound Where ZerosLike
DynamicPartition DynamicStitch ParallelDynamicStitch
"""
_NN = """
AvgPool AvgPool3D BiasAdd BiasAddV1 Conv Conv2D Conv2DBackpropInput Conv3D
DataFormatDimMap DataFormatVecPermute DepthwiseConv2dNative Dilation2D Elu FusedBatchNorm
FusedBatchNormV2 FusedBatchNormV3 InTopKV2 L2Loss LRN LeakyRelu LogSoftmax MaxPool MaxPool3D
MaxPoolV2 MaxPoolWithArgmax NthElement Relu Relu6 Selu Softmax
SoftmaxCrossEntropyWithLogits Softplus Softsign SparseSoftmaxCrossEntropyWithLogits TopKV2
AdjustContrastv2 AdjustHue AdjustSaturation CropAndResize HSVToRGB RGBToHSV ResizeArea
ResizeBicubic ResizeBilinear ResizeNearestNeighbor ScaleAndTranslate
"""
_RANDOM = """
Multinomial ParameterizedTruncatedNormal RandomGamma RandomPoisson RandomPoissonV2
RandomShuffle RandomStandardNormal RandomUniform RandomUniformInt TruncatedNormal
StatelessMultinomial StatelessParameterizedTruncatedNormal StatelessRandomBinomial
StatelessRandomGammaV2 StatelessRandomGammaV3 StatelessRandomGetAlg
StatelessRandomGetKeyCounter StatelessRandomGetKeyCounterAlg StatelessRandomNormal
StatelessRandomNormalV2 StatelessRandomPoisson StatelessRandomUniform
StatelessRandomUniformFullInt StatelessRandomUniformFullIntV2 StatelessRandomUniformInt
StatelessRandomUniformIntV2 StatelessRandomUniformV2 StatelessShuffle
StatelessTruncatedNormal StatelessTruncatedNormalV2 RngReadAndSkip RngSkip
StatefulRandomBinomial StatefulStandardNormalV2 StatefulTruncatedNormal StatefulUniform
StatefulUniformFullInt StatefulUniformInt
"""
# Variables, tables and tensor lists live in the process's own memory.
_STATE = """
AssignAddVariableOp AssignSubVariableOp AssignVariableOp DestroyResourceOp DisableCopyOnRead
ReadVariableOp ResourceGather ResourceGatherNd ResourceScatterAdd ResourceScatterDiv
ResourceScatterMax ResourceScatterMin ResourceScatterMul ResourceScatterSub
ResourceScatterUpdate ResourceStridedSliceAssign VarHandleOp VarIsInitializedOp
VariableShape
AnonymousHashTable HashTableV2 InitializeTableV2 LookupTableExportV2 LookupTableFindV2
LookupTableImportV2 LookupTableInsertV2 LookupTableRemoveV2 LookupTableSizeV2
MutableHashTableV2
EmptyTensorList TensorListConcat TensorListConcatLists TensorListConcatV2
TensorListElementShape TensorListFromTensor TensorListGather TensorListGetItem
TensorListLength TensorListPopBack TensorListPushBack TensorListPushBackBatch
TensorListReserve TensorListResize TensorListScatter TensorListScatterIntoExistingList
TensorListScatterV2 TensorListSetItem TensorListSplit TensorListStack
TensorArrayCloseV3 TensorArrayConcatV3 TensorArrayGatherV3 TensorArrayGradV3
TensorArrayReadV3 TensorArrayScatterV3 TensorArraySizeV3 TensorArraySplitV3 TensorArrayV3
TensorArrayWriteV3 StackCloseV2 StackPopV2 StackPushV2 StackV2
OptionalFromValue OptionalGetValue OptionalHasValue OptionalNone
"""
# Function calls (their functions are checked too) and control flow.
_CONTROL = """
Case FakeParam For If PartitionedCall StatefulPartitionedCall StatelessCase StatelessIf
StatelessWhile ToBool While DeviceIndex
ControlTrigger Enter Exit LoopCond Merge NextIteration NoOp Switch
Assert Timestamp
"""
# Strings appear in assertions and metadata; none of these ops touches a file.
_STRINGS = """
AsString ReduceJoin RegexFullMatch RegexReplace StaticRegexFullMatch StaticRegexReplace
StringFormat StringJoin StringLength StringLower StringSplitV2 StringStrip
StringToHashBucketFast StringToHashBucketStrong StringUpper Substr
"""

#: The ops a TF-Agents save's loaded functions may hold.
ALLOWED = _names(_MATH, _LINALG, _ARRAY, _NN, _RANDOM, _STATE, _CONTROL, _STRINGS)

_PYTHON = frozenset({"EagerPyFunc", "PyFunc", "PyFuncStateless"})
_NETWORK = frozenset(
    {"RemoteCall", "Send", "Recv", "_Send", "_Recv", "_HostSend", "_HostRecv", "Rpc", "TryRpc"}
)
_FILES = frozenset(
    {
        "ReadFile",
        "WriteFile",
        "MatchingFiles",
        "ImmutableConst",
        "DecodeProtoV2",  # its descriptor_source may name a file
        "EncodeProto",
        "LoadAndRemapMatrix",
        "GenerateVocabRemapping",
        "FileSystemSetConfiguration",
        "MergeV2Checkpoints",
        "ShardedFilename",
        "ShardedFilespec",
    }
)
_FILE_WORDS = ("Save", "Restore", "Reader", "Dataset", "FromTextFile", "Summary", "Debug")


def category(op: str) -> str:
    """Why an op outside ``ALLOWED`` is refused, for the error message."""
    if op in _PYTHON:
        return "runs Python"
    if op in _FILES or any(word in op for word in _FILE_WORDS):
        return "file access"
    if op in _NETWORK or op.startswith(("Collective", "Nccl")):
        return "network or another device"
    if op in ("Print", "PrintV2"):
        return "writes to an output stream or a file"
    if op == "Abort":
        return "ends the process"
    return "not on the import's allow-list"
