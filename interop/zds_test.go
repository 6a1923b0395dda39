package interop_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"

	"github.com/meshblocks/meshblocks/inpod"
)

// ours converts one of Istio's WorkloadRequests to ours, for comparison.
func fromIstio(r *zdsapi.WorkloadRequest) inpod.WorkloadRequest {
	switch p := r.Payload.(type) {
	case *zdsapi.WorkloadRequest_Add:
		a := &inpod.AddWorkload{UID: p.Add.GetUid()}
		if wi := p.Add.GetWorkloadInfo(); wi != nil {
			a.WorkloadInfo = &inpod.WorkloadInfo{Name: wi.Name, Namespace: wi.Namespace, ServiceAccount: wi.ServiceAccount}
		}
		return a
	case *zdsapi.WorkloadRequest_Keep:
		return &inpod.KeepWorkload{UID: p.Keep.GetUid()}
	case *zdsapi.WorkloadRequest_Del:
		return &inpod.DelWorkload{UID: p.Del.GetUid()}
	case *zdsapi.WorkloadRequest_SnapshotSent:
		return &inpod.SnapshotSent{}
	}
	return nil
}

func zdsRequests() []struct {
	name   string
	ours   inpod.WorkloadRequest
	theirs *zdsapi.WorkloadRequest
} {
	long := strings.Repeat("x", 253)
	return []struct {
		name   string
		ours   inpod.WorkloadRequest
		theirs *zdsapi.WorkloadRequest
	}{
		{"add", &inpod.AddWorkload{UID: "u1", WorkloadInfo: &inpod.WorkloadInfo{Name: "n", Namespace: "ns", ServiceAccount: "sa"}},
			&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: "u1",
				WorkloadInfo: &zdsapi.WorkloadInfo{Name: "n", Namespace: "ns", ServiceAccount: "sa"}}}}},
		{"add long names", &inpod.AddWorkload{UID: "3c3c7c04-2f8e-4c1e-9d0b-5b0d7f1a2e33", WorkloadInfo: &inpod.WorkloadInfo{Name: long, Namespace: long[:63], ServiceAccount: long}},
			&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: "3c3c7c04-2f8e-4c1e-9d0b-5b0d7f1a2e33",
				WorkloadInfo: &zdsapi.WorkloadInfo{Name: long, Namespace: long[:63], ServiceAccount: long}}}}},
		{"add unicode", &inpod.AddWorkload{UID: "üid", WorkloadInfo: &inpod.WorkloadInfo{Name: "名前"}},
			&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: "üid",
				WorkloadInfo: &zdsapi.WorkloadInfo{Name: "名前"}}}}},
		{"add without info", &inpod.AddWorkload{UID: "u1"},
			&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: "u1"}}}},
		{"add empty info", &inpod.AddWorkload{UID: "u1", WorkloadInfo: &inpod.WorkloadInfo{}},
			&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: "u1", WorkloadInfo: &zdsapi.WorkloadInfo{}}}}},
		{"keep", &inpod.KeepWorkload{UID: "u2"},
			&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Keep{Keep: &zdsapi.KeepWorkload{Uid: "u2"}}}},
		{"keep empty", &inpod.KeepWorkload{},
			&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Keep{Keep: &zdsapi.KeepWorkload{}}}},
		{"del", &inpod.DelWorkload{UID: "u3"},
			&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Del{Del: &zdsapi.DelWorkload{Uid: "u3"}}}},
		{"snapshot sent", &inpod.SnapshotSent{},
			&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_SnapshotSent{SnapshotSent: &zdsapi.SnapshotSent{}}}},
	}
}

// Our hand-written ZDS encodings are byte for byte Istio's generated
// zdsapi's proto.Marshal output, and each side decodes the other's.
func TestZDSRequestsMatchIstio(t *testing.T) {
	for _, tc := range zdsRequests() {
		t.Run(tc.name, func(t *testing.T) {
			ours, err := inpod.MarshalWorkloadRequest(tc.ours)
			require.NoError(t, err)
			theirs, err := proto.Marshal(tc.theirs)
			require.NoError(t, err)
			require.Equal(t, theirs, ours)

			var decoded zdsapi.WorkloadRequest
			require.NoError(t, proto.Unmarshal(ours, &decoded))
			require.True(t, proto.Equal(tc.theirs, &decoded), "istio decoded %v", &decoded)
			back, err := inpod.UnmarshalWorkloadRequest(theirs)
			require.NoError(t, err)
			require.Equal(t, tc.ours, back)
		})
	}
}

func TestZDSHelloAndAckMatchIstio(t *testing.T) {
	for _, v := range []inpod.ZDSVersion{inpod.ZDSVersionNotUsed, inpod.ZDSVersion1, 7} {
		ours, err := inpod.ZDSHello{Version: v}.Marshal()
		require.NoError(t, err)
		theirs, err := proto.Marshal(&zdsapi.ZdsHello{Version: zdsapi.Version(v)})
		require.NoError(t, err)
		require.Equal(t, theirs, ours, "version %d", v)
		var h zdsapi.ZdsHello
		require.NoError(t, proto.Unmarshal(ours, &h))
		require.Equal(t, int32(v), int32(h.Version))
		back, err := inpod.UnmarshalZDSHello(theirs)
		require.NoError(t, err)
		require.Equal(t, v, back.Version)
	}
	for _, msg := range []string{"", "failed to start proxy: bind: address already in use"} {
		ours, err := inpod.WorkloadResponse{Ack: &inpod.Ack{Error: msg}}.Marshal()
		require.NoError(t, err)
		want := &zdsapi.WorkloadResponse{Payload: &zdsapi.WorkloadResponse_Ack{Ack: &zdsapi.Ack{Error: msg}}}
		theirs, err := proto.Marshal(want)
		require.NoError(t, err)
		require.Equal(t, theirs, ours)
		var r zdsapi.WorkloadResponse
		require.NoError(t, proto.Unmarshal(ours, &r))
		require.True(t, proto.Equal(want, &r))
		back, err := inpod.UnmarshalWorkloadResponse(theirs)
		require.NoError(t, err)
		require.Equal(t, msg, back.Ack.Error)
	}
}

// FuzzZDSDecodeAgreesWithIstio: whatever our strict decoder accepts,
// Istio's generated code accepts too and reads the same request.
func FuzzZDSDecodeAgreesWithIstio(f *testing.F) {
	for _, tc := range zdsRequests() {
		b, err := proto.Marshal(tc.theirs)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ours, err := inpod.UnmarshalWorkloadRequest(b)
		if err != nil {
			return
		}
		var theirs zdsapi.WorkloadRequest
		require.NoError(t, proto.Unmarshal(b, &theirs), "istio rejects what we accepted")
		require.Equal(t, fromIstio(&theirs), ours)
	})
}
