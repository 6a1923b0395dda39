package spire_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/meshblocks/meshblocks/identity/spire"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// workloadAPIServer is a real gRPC implementation of the SPIFFE Workload
// API's X.509 profile, as a SPIRE agent serves it, fed by a test.
type workloadAPIServer struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	ca *identitytest.CA

	mu      sync.Mutex
	current *workload.X509SVIDResponse
	changed chan struct{} // closed and replaced on every update
}

func newWorkloadAPIServer(ca *identitytest.CA) *workloadAPIServer {
	return &workloadAPIServer{ca: ca, changed: make(chan struct{})}
}

func (s *workloadAPIServer) publish(svids ...*x509svid.SVID) {
	resp := &workload.X509SVIDResponse{}
	for _, sv := range svids {
		var chain []byte
		for _, c := range sv.Certificates {
			chain = append(chain, c.Raw...)
		}
		key, err := x509.MarshalPKCS8PrivateKey(sv.PrivateKey)
		if err != nil {
			panic(err)
		}
		resp.Svids = append(resp.Svids, &workload.X509SVID{
			SpiffeId:    sv.ID.String(),
			X509Svid:    chain,
			X509SvidKey: key,
			Bundle:      s.ca.Root().Raw,
		})
	}
	s.mu.Lock()
	s.current = resp
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *workloadAPIServer) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	for {
		s.mu.Lock()
		resp, changed := s.current, s.changed
		s.mu.Unlock()
		if resp != nil {
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changed:
		}
	}
}

func serveWorkloadAPI(t *testing.T, api *workloadAPIServer) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, api)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return "unix://" + sock
}

func TestWorkloadAPISource(t *testing.T) {
	leakcheck.Check(t)
	ca := identitytest.NewCA(t, "cluster.local")
	api := newWorkloadAPIServer(ca)
	addr := serveWorkloadAPI(t, api)
	first := ca.SVID(t, "ns/default/sa/sleep")
	api.publish(first, ca.SVID(t, "ns/default/sa/other"))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := spire.New(ctx, spire.Config{Addr: addr})
	require.NoError(t, err)
	defer src.Close()

	got, err := src.SVID(ctx)
	require.NoError(t, err)
	assert.Equal(t, first.ID, got.ID)
	assert.Equal(t, first.Certificates[0].Raw, got.Certificates[0].Raw)
	b, err := src.Bundle(ctx)
	require.NoError(t, err)
	assert.True(t, b.Equal(ca.Bundle()))

	// A rotation pushed by the agent is seen by the next call.
	second := ca.SVID(t, "ns/default/sa/sleep")
	api.publish(second)
	require.NoError(t, src.X509Source().WaitUntilUpdated(ctx))
	got, err = src.SVID(ctx)
	require.NoError(t, err)
	assert.Equal(t, second.Certificates[0].Raw, got.Certificates[0].Raw)

	// It works as the Source of a real mTLS handshake.
	clientErr, serverErr := handshake(ctx,
		identity.ServerTLSConfig(src),
		identity.ClientTLSConfig(ca.Source(t, "ns/default/sa/client"), first.ID))
	require.NoError(t, clientErr)
	require.NoError(t, serverErr)
}

// handshake runs one TLS handshake between the two configs over net.Pipe.
func handshake(ctx context.Context, serverConf, clientConf *tls.Config) (clientErr, serverErr error) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	done := make(chan error, 1)
	go func() { done <- tls.Server(b, serverConf).HandshakeContext(ctx) }()
	clientErr = tls.Client(a, clientConf).HandshakeContext(ctx)
	if clientErr != nil {
		a.Close() // unblock the server
	}
	return clientErr, <-done
}

func TestWorkloadAPISourcePicksID(t *testing.T) {
	leakcheck.Check(t)
	ca := identitytest.NewCA(t, "cluster.local")
	api := newWorkloadAPIServer(ca)
	addr := serveWorkloadAPI(t, api)
	api.publish(ca.SVID(t, "ns/default/sa/first"), ca.SVID(t, "ns/default/sa/second"))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	want := ca.ID("ns/default/sa/second")
	src, err := spire.New(ctx, spire.Config{Addr: addr, ID: want})
	require.NoError(t, err)
	defer src.Close()
	got, err := src.SVID(ctx)
	require.NoError(t, err)
	assert.Equal(t, want, got.ID)

	missing, err := spire.New(ctx, spire.Config{Addr: addr, ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/x/sa/y")})
	require.NoError(t, err)
	defer missing.Close()
	_, err = missing.SVID(ctx)
	assert.ErrorContains(t, err, "no SVID for spiffe://cluster.local/ns/x/sa/y")
}

func TestWorkloadAPISourceErrors(t *testing.T) {
	leakcheck.Check(t)
	_, err := spire.New(t.Context(), spire.Config{})
	assert.ErrorContains(t, err, "Addr is empty")
	_, err = spire.New(t.Context(), spire.Config{Addr: "http://x"})
	assert.ErrorContains(t, err, `Addr "http://x"`)

	// No agent listening: the constructor gives up with its context.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = spire.New(ctx, spire.Config{Addr: "unix://" + filepath.Join(t.TempDir(), "none.sock")})
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}
