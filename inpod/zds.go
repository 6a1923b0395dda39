package inpod

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// The ZDS protocol ("ztunnel discovery service", package
// istio.workload.zds) carries pods from the node agent to the node proxy
// over a SOCK_SEQPACKET Unix socket, one protobuf message per datagram.
// The types below are its messages, encoded by hand with the same field
// numbers as Istio's zds.proto, so the bytes are Istio's. They register
// nothing with the protobuf runtime, so a program may link Istio's
// generated zdsapi package beside this one.

// MaxMessageSize is the size of the buffers both ends of ZDS read into. A
// datagram that does not fit is truncated and rejected, so every message
// must be shorter than this.
const MaxMessageSize = 1024

// ZDSVersion is the protocol version a proxy announces in its hello.
type ZDSVersion int32

const (
	// ZDSVersionNotUsed is the zero value of the enum.
	ZDSVersionNotUsed ZDSVersion = 0
	// ZDSVersion1 is the only version.
	ZDSVersion1 ZDSVersion = 1
)

// ZDSHello is the first message on every connection, from the proxy to
// the node agent (ZdsHello).
type ZDSHello struct {
	Version ZDSVersion
}

// WorkloadInfo names a pod's workload: the proxy finds the workload, and
// its identity, by these three.
type WorkloadInfo struct {
	Name           string
	Namespace      string
	ServiceAccount string
}

// WorkloadRequest is a message from the node agent to the proxy: one of
// [*AddWorkload], [*KeepWorkload], [*DelWorkload] or [*SnapshotSent].
type WorkloadRequest interface {
	isWorkloadRequest()
}

// AddWorkload asks the proxy to serve a pod. Its datagram carries exactly
// one file descriptor, the pod's network namespace, as SCM_RIGHTS.
// WorkloadInfo is required.
type AddWorkload struct {
	UID          string
	WorkloadInfo *WorkloadInfo
}

// KeepWorkload, valid only in the initial snapshot, tells the proxy to
// keep serving a pod the agent knows but has no namespace handle for.
type KeepWorkload struct {
	UID string
}

// DelWorkload asks the proxy to stop serving a pod.
type DelWorkload struct {
	UID string
}

// SnapshotSent ends the initial snapshot: pods the proxy serves that the
// snapshot did not mention are to be dropped.
type SnapshotSent struct{}

func (*AddWorkload) isWorkloadRequest()  {}
func (*KeepWorkload) isWorkloadRequest() {}
func (*DelWorkload) isWorkloadRequest()  {}
func (*SnapshotSent) isWorkloadRequest() {}

// WorkloadResponse is the proxy's answer to each WorkloadRequest. Ack is
// nil only in a malformed response.
type WorkloadResponse struct {
	Ack *Ack
}

// Ack acknowledges a request. An empty Error is an ACK; anything else is
// a NACK carrying the reason.
type Ack struct {
	Error string
}

// Field numbers, from zds.proto.
const (
	fHelloVersion = 1

	fInfoName           = 1
	fInfoNamespace      = 2
	fInfoServiceAccount = 3

	fAddUID  = 1
	fAddInfo = 2
	fKeepUID = 1
	fDelUID  = 2

	fReqAdd          = 1
	fReqDel          = 2
	fReqSnapshotSent = 3
	fReqKeep         = 5

	fRespAck  = 1
	fAckError = 1
)

// ErrMalformedMessage is matched (errors.Is) by every [MessageError].
var ErrMalformedMessage = errors.New("inpod: malformed ZDS message")

// ErrMessageTooLarge is returned when a message would not fit in
// MaxMessageSize.
var ErrMessageTooLarge = errors.New("inpod: ZDS message too large")

// MessageError describes a ZDS message that could not be decoded (or, for
// invalid strings, encoded): which field, at which byte offset of the
// message.
type MessageError struct {
	// Field is the path of the field at fault, such as
	// "WorkloadRequest.add.workload_info.name", or the message name when no
	// field could be read.
	Field string
	// Offset is the byte offset in the message where the fault starts.
	Offset int
	// Reason says what is wrong.
	Reason string
}

func (e *MessageError) Error() string {
	return fmt.Sprintf("inpod: ZDS %s at byte %d: %s", e.Field, e.Offset, e.Reason)
}

// Is makes errors.Is(err, ErrMalformedMessage) true.
func (e *MessageError) Is(target error) bool { return target == ErrMalformedMessage }

// --- encoding ---

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendMessage(b []byte, num protowire.Number, m []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, m)
}

// checkUTF8 reports strings that proto3 refuses to encode.
func checkUTF8(field string, ss ...string) error {
	for _, s := range ss {
		if !utf8.ValidString(s) {
			return &MessageError{Field: field, Reason: "string field is not valid UTF-8"}
		}
	}
	return nil
}

func sized(b []byte, what string) ([]byte, error) {
	if len(b) >= MaxMessageSize {
		return nil, fmt.Errorf("%w: %s is %d bytes, the limit is %d", ErrMessageTooLarge, what, len(b), MaxMessageSize-1)
	}
	return b, nil
}

// Marshal encodes the hello.
func (h ZDSHello) Marshal() ([]byte, error) {
	b := []byte{}
	if h.Version != 0 {
		b = protowire.AppendTag(b, fHelloVersion, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int64(h.Version)))
	}
	return b, nil
}

func (w *WorkloadInfo) marshal() []byte {
	var b []byte
	b = appendString(b, fInfoName, w.Name)
	b = appendString(b, fInfoNamespace, w.Namespace)
	return appendString(b, fInfoServiceAccount, w.ServiceAccount)
}

// MarshalWorkloadRequest encodes r as a WorkloadRequest. It fails if r is
// nil, a string is not valid UTF-8, or the result would not fit in
// MaxMessageSize.
func MarshalWorkloadRequest(r WorkloadRequest) ([]byte, error) {
	var num protowire.Number
	var body []byte
	switch r := r.(type) {
	case *AddWorkload:
		if r == nil {
			break
		}
		if err := checkUTF8("WorkloadRequest.add.uid", r.UID); err != nil {
			return nil, err
		}
		num, body = fReqAdd, appendString(nil, fAddUID, r.UID)
		if r.WorkloadInfo != nil {
			w := r.WorkloadInfo
			if err := checkUTF8("WorkloadRequest.add.workload_info", w.Name, w.Namespace, w.ServiceAccount); err != nil {
				return nil, err
			}
			body = appendMessage(body, fAddInfo, w.marshal())
		}
	case *KeepWorkload:
		if r == nil {
			break
		}
		if err := checkUTF8("WorkloadRequest.keep.uid", r.UID); err != nil {
			return nil, err
		}
		num, body = fReqKeep, appendString(nil, fKeepUID, r.UID)
	case *DelWorkload:
		if r == nil {
			break
		}
		if err := checkUTF8("WorkloadRequest.del.uid", r.UID); err != nil {
			return nil, err
		}
		num, body = fReqDel, appendString(nil, fDelUID, r.UID)
	case *SnapshotSent:
		if r != nil {
			num = fReqSnapshotSent
		}
	}
	if num == 0 {
		return nil, fmt.Errorf("inpod: marshal WorkloadRequest: no payload (%T)", r)
	}
	return sized(appendMessage(nil, num, body), "WorkloadRequest")
}

// Marshal encodes the response.
func (r WorkloadResponse) Marshal() ([]byte, error) {
	if r.Ack == nil {
		return []byte{}, nil
	}
	if err := checkUTF8("WorkloadResponse.ack.error", r.Ack.Error); err != nil {
		return nil, err
	}
	return sized(appendMessage(nil, fRespAck, appendString(nil, fAckError, r.Ack.Error)), "WorkloadResponse")
}

// --- decoding ---

// decoder walks the fields of one message. base is the offset of b in the
// outermost message, for error offsets.
type decoder struct {
	msg  string // field path of this message
	b    []byte
	base int
	off  int
}

func (d *decoder) fail(field string, at int, format string, args ...any) error {
	path := d.msg
	if field != "" {
		path += "." + field
	}
	return &MessageError{Field: path, Offset: d.base + at, Reason: fmt.Sprintf(format, args...)}
}

// next reads the next field's tag. ok is false at the end.
func (d *decoder) next() (num protowire.Number, typ protowire.Type, start int, ok bool, err error) {
	if d.off >= len(d.b) {
		return 0, 0, 0, false, nil
	}
	start = d.off
	num, typ, n := protowire.ConsumeTag(d.b[d.off:])
	if n < 0 {
		return 0, 0, start, false, d.fail("", start, "bad field tag: %v", protowire.ParseError(n))
	}
	d.off += n
	return num, typ, start, true, nil
}

// skip consumes an unknown field's value, as proto3 does.
func (d *decoder) skip(num protowire.Number, typ protowire.Type, start int) error {
	n := protowire.ConsumeFieldValue(num, typ, d.b[d.off:])
	if n < 0 {
		return d.fail(fmt.Sprintf("<field %d>", num), start, "bad value of unknown field: %v", protowire.ParseError(n))
	}
	d.off += n
	return nil
}

// bytes consumes a length-delimited value of field name.
func (d *decoder) bytes(name string, typ protowire.Type, start int) ([]byte, int, error) {
	if typ != protowire.BytesType {
		return nil, 0, d.fail(name, start, "wire type %d, want %d (length-delimited)", typ, protowire.BytesType)
	}
	v, n := protowire.ConsumeBytes(d.b[d.off:])
	if n < 0 {
		return nil, 0, d.fail(name, start, "bad length-delimited value: %v", protowire.ParseError(n))
	}
	at := d.off + n - len(v)
	d.off += n
	return v, at, nil
}

func (d *decoder) string(name string, typ protowire.Type, start int) (string, error) {
	v, at, err := d.bytes(name, typ, start)
	if err != nil {
		return "", err
	}
	if !utf8.Valid(v) {
		return "", d.fail(name, at, "string field is not valid UTF-8")
	}
	return string(v), nil
}

// sub returns a decoder for an embedded message of field name.
func (d *decoder) sub(name string, typ protowire.Type, start int) (*decoder, error) {
	v, at, err := d.bytes(name, typ, start)
	if err != nil {
		return nil, err
	}
	return &decoder{msg: d.msg + "." + name, b: v, base: d.base + at}, nil
}

// UnmarshalZDSHello decodes a ZdsHello.
func UnmarshalZDSHello(b []byte) (ZDSHello, error) {
	var h ZDSHello
	d := &decoder{msg: "ZdsHello", b: b}
	for {
		num, typ, start, ok, err := d.next()
		if err != nil {
			return ZDSHello{}, err
		}
		if !ok {
			return h, nil
		}
		if num != fHelloVersion {
			if err := d.skip(num, typ, start); err != nil {
				return ZDSHello{}, err
			}
			continue
		}
		if typ != protowire.VarintType {
			return ZDSHello{}, d.fail("version", start, "wire type %d, want %d (varint)", typ, protowire.VarintType)
		}
		v, n := protowire.ConsumeVarint(d.b[d.off:])
		if n < 0 {
			return ZDSHello{}, d.fail("version", start, "bad varint: %v", protowire.ParseError(n))
		}
		d.off += n
		h.Version = ZDSVersion(int32(v)) // enums are int32; like protobuf, keep unknown values
	}
}

func (w *WorkloadInfo) merge(d *decoder) error {
	for {
		num, typ, start, ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		var dst *string
		var name string
		switch num {
		case fInfoName:
			dst, name = &w.Name, "name"
		case fInfoNamespace:
			dst, name = &w.Namespace, "namespace"
		case fInfoServiceAccount:
			dst, name = &w.ServiceAccount, "service_account"
		default: // including the reserved trust_domain (4)
			if err := d.skip(num, typ, start); err != nil {
				return err
			}
			continue
		}
		if *dst, err = d.string(name, typ, start); err != nil {
			return err
		}
	}
}

func (a *AddWorkload) merge(d *decoder) error {
	for {
		num, typ, start, ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		switch num {
		case fAddUID:
			if a.UID, err = d.string("uid", typ, start); err != nil {
				return err
			}
		case fAddInfo:
			sub, err := d.sub("workload_info", typ, start)
			if err != nil {
				return err
			}
			if a.WorkloadInfo == nil {
				a.WorkloadInfo = &WorkloadInfo{}
			}
			if err := a.WorkloadInfo.merge(sub); err != nil {
				return err
			}
		default:
			if err := d.skip(num, typ, start); err != nil {
				return err
			}
		}
	}
}

// mergeString decodes a message whose only field is the string field
// name with number num.
func mergeString(d *decoder, num protowire.Number, name string, dst *string) error {
	for {
		n, typ, start, ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		if n != num {
			if err := d.skip(n, typ, start); err != nil {
				return err
			}
			continue
		}
		if *dst, err = d.string(name, typ, start); err != nil {
			return err
		}
	}
}

func skipAll(d *decoder) error {
	for {
		num, typ, start, ok, err := d.next()
		if err != nil || !ok {
			return err
		}
		if err := d.skip(num, typ, start); err != nil {
			return err
		}
	}
}

// UnmarshalWorkloadRequest decodes a WorkloadRequest. As in protobuf, a
// repeated payload field is merged into the previous one and a different
// payload field replaces it; unknown fields are skipped. A request without
// a payload is an error, as are truncated or mistyped fields and invalid
// UTF-8. It does not check semantics (such as AddWorkload's required
// WorkloadInfo); see [Client].
func UnmarshalWorkloadRequest(b []byte) (WorkloadRequest, error) {
	var r WorkloadRequest
	d := &decoder{msg: "WorkloadRequest", b: b}
	for {
		num, typ, start, ok, err := d.next()
		if err != nil {
			return nil, err
		}
		if !ok {
			break
		}
		var name string
		switch num {
		case fReqAdd:
			name = "add"
		case fReqDel:
			name = "del"
		case fReqSnapshotSent:
			name = "snapshot_sent"
		case fReqKeep:
			name = "keep"
		default:
			if err := d.skip(num, typ, start); err != nil {
				return nil, err
			}
			continue
		}
		sub, err := d.sub(name, typ, start)
		if err != nil {
			return nil, err
		}
		switch num {
		case fReqAdd:
			a, ok := r.(*AddWorkload)
			if !ok {
				a = &AddWorkload{}
			}
			r, err = a, a.merge(sub)
		case fReqDel:
			x, ok := r.(*DelWorkload)
			if !ok {
				x = &DelWorkload{}
			}
			r, err = x, mergeString(sub, fDelUID, "uid", &x.UID)
		case fReqKeep:
			x, ok := r.(*KeepWorkload)
			if !ok {
				x = &KeepWorkload{}
			}
			r, err = x, mergeString(sub, fKeepUID, "uid", &x.UID)
		case fReqSnapshotSent:
			x, ok := r.(*SnapshotSent)
			if !ok {
				x = &SnapshotSent{}
			}
			r, err = x, skipAll(sub)
		}
		if err != nil {
			return nil, err
		}
	}
	if r == nil {
		return nil, &MessageError{Field: "WorkloadRequest", Offset: 0, Reason: "no payload (add, keep, del or snapshot_sent)"}
	}
	return r, nil
}

// UnmarshalWorkloadResponse decodes a WorkloadResponse. A response
// without an ack decodes to a nil Ack; the caller decides (the [Server]
// treats it as a protocol error).
func UnmarshalWorkloadResponse(b []byte) (WorkloadResponse, error) {
	var r WorkloadResponse
	d := &decoder{msg: "WorkloadResponse", b: b}
	for {
		num, typ, start, ok, err := d.next()
		if err != nil {
			return WorkloadResponse{}, err
		}
		if !ok {
			return r, nil
		}
		if num != fRespAck {
			if err := d.skip(num, typ, start); err != nil {
				return WorkloadResponse{}, err
			}
			continue
		}
		sub, err := d.sub("ack", typ, start)
		if err != nil {
			return WorkloadResponse{}, err
		}
		if r.Ack == nil {
			r.Ack = &Ack{}
		}
		if err := mergeString(sub, fAckError, "error", &r.Ack.Error); err != nil {
			return WorkloadResponse{}, err
		}
	}
}
