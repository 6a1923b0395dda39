package inpod_test

import (
	"encoding/hex"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/inpod"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	require.NoError(t, err)
	return b
}

// The first four rows are the bytes the spec verified with Istio's zdsapi
// and proto.Marshal; the rest follow from zds.proto's field numbers (the
// interop module checks all of them against zdsapi).
func TestZDSRequestBytes(t *testing.T) {
	tests := []struct {
		name string
		req  inpod.WorkloadRequest
		hex  string
	}{
		{"snapshot sent", &inpod.SnapshotSent{}, "1a 00"},
		{"add", &inpod.AddWorkload{UID: "u1", WorkloadInfo: &inpod.WorkloadInfo{Name: "n", Namespace: "ns", ServiceAccount: "sa"}},
			"0a 11 0a 02 75 31 12 0b 0a 01 6e 12 02 6e 73 1a 02 73 61"},
		{"add without info", &inpod.AddWorkload{UID: "u1"}, "0a 04 0a 02 75 31"},
		{"add with empty info", &inpod.AddWorkload{UID: "u1", WorkloadInfo: &inpod.WorkloadInfo{}}, "0a 06 0a 02 75 31 12 00"},
		{"del (uid is field 2)", &inpod.DelWorkload{UID: "u1"}, "12 04 12 02 75 31"},
		{"keep (field 5)", &inpod.KeepWorkload{UID: "u1"}, "2a 04 0a 02 75 31"},
		{"keep empty uid", &inpod.KeepWorkload{}, "2a 00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := inpod.MarshalWorkloadRequest(tc.req)
			require.NoError(t, err)
			require.Equal(t, unhex(t, tc.hex), got)
			back, err := inpod.UnmarshalWorkloadRequest(got)
			require.NoError(t, err)
			require.Equal(t, tc.req, back)
		})
	}
}

func TestZDSHelloAndResponseBytes(t *testing.T) {
	b, err := inpod.ZDSHello{Version: inpod.ZDSVersion1}.Marshal()
	require.NoError(t, err)
	require.Equal(t, unhex(t, "08 01"), b)
	h, err := inpod.UnmarshalZDSHello(b)
	require.NoError(t, err)
	require.Equal(t, inpod.ZDSVersion1, h.Version)
	b, err = inpod.ZDSHello{}.Marshal()
	require.NoError(t, err)
	require.Empty(t, b)
	h, err = inpod.UnmarshalZDSHello(unhex(t, "08 ff ff ff ff 0f"))
	require.NoError(t, err)
	require.Equal(t, inpod.ZDSVersion(-1), h.Version, "enums are int32; unknown values are kept")

	tests := []struct {
		name string
		resp inpod.WorkloadResponse
		hex  string
	}{
		{"ack", inpod.WorkloadResponse{Ack: &inpod.Ack{}}, "0a 00"},
		{"nack", inpod.WorkloadResponse{Ack: &inpod.Ack{Error: "x"}}, "0a 03 0a 01 78"},
		{"no ack", inpod.WorkloadResponse{}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.resp.Marshal()
			require.NoError(t, err)
			require.Equal(t, unhex(t, tc.hex), append([]byte{}, got...))
			back, err := inpod.UnmarshalWorkloadResponse(got)
			require.NoError(t, err)
			require.Equal(t, tc.resp, back)
		})
	}
}

func TestZDSDecodeProto3Rules(t *testing.T) {
	tests := []struct {
		name string
		hex  string
		want inpod.WorkloadRequest
	}{
		{"unknown fields are skipped",
			// add{uid u1, info{name n, trust_domain(4) "td"}, field 9 varint}, then field 9 fixed32
			"0a 0f 0a 02 75 31 12 07 0a 01 6e 22 02 74 64 48 07 4d 01 02 03 04",
			&inpod.AddWorkload{UID: "u1", WorkloadInfo: &inpod.WorkloadInfo{Name: "n"}}},
		{"a repeated payload merges",
			"0a 04 0a 02 75 31 0a 05 12 03 0a 01 6e",
			&inpod.AddWorkload{UID: "u1", WorkloadInfo: &inpod.WorkloadInfo{Name: "n"}}},
		{"the last scalar wins", "12 04 12 02 75 31 12 04 12 02 75 32", &inpod.DelWorkload{UID: "u2"}},
		{"a different payload replaces", "0a 04 0a 02 75 31 12 04 12 02 75 32", &inpod.DelWorkload{UID: "u2"}},
		{"unknown group skipped", "33 08 01 34 1a 00", &inpod.SnapshotSent{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := inpod.UnmarshalWorkloadRequest(unhex(t, tc.hex))
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestZDSDecodeErrors(t *testing.T) {
	tests := []struct {
		name string
		hex  string
		want string
	}{
		{"empty", "", "inpod: ZDS WorkloadRequest at byte 0: no payload"},
		{"only unknown fields", "48 01", "no payload"},
		{"truncated add", "0a 11 0a 02", "inpod: ZDS WorkloadRequest.add at byte 0: bad length-delimited value: unexpected EOF"},
		{"wrong wire type", "08 01", "inpod: ZDS WorkloadRequest.add at byte 0: wire type 0, want 2 (length-delimited)"},
		{"field number zero", "00 01", "inpod: ZDS WorkloadRequest at byte 0: bad field tag"},
		{"invalid UTF-8 name", "0a 05 12 03 0a 01 ff",
			"inpod: ZDS WorkloadRequest.add.workload_info.name at byte 6: string field is not valid UTF-8"},
		{"truncated nested", "0a 06 0a 02 75 31 12 05", "inpod: ZDS WorkloadRequest.add.workload_info at byte 6: bad length-delimited value"},
		{"bad unknown value", "1a 00 4d 01", "inpod: ZDS WorkloadRequest.<field 9> at byte 2: bad value of unknown field"},
		{"uid as varint", "12 02 10 01", "inpod: ZDS WorkloadRequest.del.uid at byte 2: wire type 0"},
		{"bad varint", "1a 00 48 ff ff ff ff ff ff ff ff ff ff", "WorkloadRequest.<field 9> at byte 2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := inpod.UnmarshalWorkloadRequest(unhex(t, tc.hex))
			require.ErrorIs(t, err, inpod.ErrMalformedMessage)
			require.ErrorContains(t, err, tc.want)
		})
	}

	_, err := inpod.UnmarshalWorkloadResponse(unhex(t, "0a 02 0a"))
	require.ErrorContains(t, err, "inpod: ZDS WorkloadResponse.ack at byte 0")
	_, err = inpod.UnmarshalWorkloadResponse(unhex(t, "0a 03 0a 01 c0"))
	require.ErrorContains(t, err, "inpod: ZDS WorkloadResponse.ack.error at byte 4: string field is not valid UTF-8")
	_, err = inpod.UnmarshalZDSHello(unhex(t, "0a 00"))
	require.ErrorContains(t, err, "inpod: ZDS ZdsHello.version at byte 0: wire type 2, want 0 (varint)")
	_, err = inpod.UnmarshalZDSHello(unhex(t, "08"))
	require.ErrorContains(t, err, "inpod: ZDS ZdsHello.version at byte 0: bad varint")
}

func TestZDSMarshalErrors(t *testing.T) {
	_, err := inpod.MarshalWorkloadRequest(nil)
	require.ErrorContains(t, err, "no payload")
	_, err = inpod.MarshalWorkloadRequest((*inpod.AddWorkload)(nil))
	require.ErrorContains(t, err, "no payload")
	_, err = inpod.MarshalWorkloadRequest(&inpod.AddWorkload{UID: strings.Repeat("u", 1020), WorkloadInfo: &inpod.WorkloadInfo{}})
	require.ErrorIs(t, err, inpod.ErrMessageTooLarge)
	require.ErrorContains(t, err, "WorkloadRequest is 1028 bytes, the limit is 1023")
	// The largest pod names Kubernetes allows still fit.
	long := strings.Repeat("a", 253)
	b, err := inpod.MarshalWorkloadRequest(&inpod.AddWorkload{UID: "0f8a3a4e-8d8c-4c55-b2d4-1f7d6d8a9e01",
		WorkloadInfo: &inpod.WorkloadInfo{Name: long, Namespace: long[:63], ServiceAccount: long}})
	require.NoError(t, err)
	require.Less(t, len(b), inpod.MaxMessageSize)
	_, err = inpod.MarshalWorkloadRequest(&inpod.DelWorkload{UID: "\xff"})
	require.ErrorIs(t, err, inpod.ErrMalformedMessage)
	require.ErrorContains(t, err, "WorkloadRequest.del.uid")
	_, err = inpod.WorkloadResponse{Ack: &inpod.Ack{Error: "\xc0"}}.Marshal()
	require.ErrorContains(t, err, "WorkloadResponse.ack.error")
}

// Fuzz targets: whatever decodes must re-encode to something that decodes
// to the same value.

func FuzzUnmarshalWorkloadRequest(f *testing.F) {
	for _, s := range []string{"1a00", "0a110a027531120b0a016e12026e731a027361", "120412027531", "2a040a027531",
		"0a0f0a027531120 70a016e2202746448074d01020304", "330801341a00"} {
		b, _ := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := inpod.UnmarshalWorkloadRequest(b)
		if err != nil {
			require.ErrorIs(t, err, inpod.ErrMalformedMessage)
			return
		}
		enc, err := inpod.MarshalWorkloadRequest(r)
		if err != nil {
			require.ErrorIs(t, err, inpod.ErrMessageTooLarge)
			return
		}
		back, err := inpod.UnmarshalWorkloadRequest(enc)
		require.NoError(t, err)
		require.Equal(t, r, back)
	})
}

func FuzzUnmarshalWorkloadResponse(f *testing.F) {
	f.Add([]byte{0x0a, 0x00})
	f.Add([]byte{0x0a, 0x03, 0x0a, 0x01, 0x78})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := inpod.UnmarshalWorkloadResponse(b)
		if err != nil {
			require.ErrorIs(t, err, inpod.ErrMalformedMessage)
			return
		}
		enc, err := r.Marshal()
		if err != nil {
			require.ErrorIs(t, err, inpod.ErrMessageTooLarge)
			return
		}
		back, err := inpod.UnmarshalWorkloadResponse(enc)
		require.NoError(t, err)
		require.Equal(t, r, back)
	})
}

func FuzzUnmarshalZDSHello(f *testing.F) {
	f.Add([]byte{0x08, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := inpod.UnmarshalZDSHello(b)
		if err != nil {
			require.ErrorIs(t, err, inpod.ErrMalformedMessage)
			return
		}
		enc, err := h.Marshal()
		require.NoError(t, err)
		back, err := inpod.UnmarshalZDSHello(enc)
		require.NoError(t, err)
		require.Equal(t, h, back)
	})
}
