package identity_test

import (
	"context"
	"crypto/tls"
	"errors"
	"math/big"
	"net"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pipeHandshake runs a real TLS handshake over net.Pipe, which works inside
// a synctest bubble. It returns the serial the server presented and the
// errors of both sides.
func pipeHandshake(ctx context.Context, serverConf, clientConf *tls.Config) (serial *big.Int, serverErr, clientErr error) {
	c1, c2 := net.Pipe()
	done := make(chan error, 1)
	go func() {
		s := tls.Server(c2, serverConf)
		err := s.HandshakeContext(ctx)
		if err == nil {
			_, err = s.Write([]byte{1})
		}
		c2.Close()
		done <- err
	}()
	c := tls.Client(c1, clientConf)
	clientErr = c.HandshakeContext(ctx)
	if clientErr == nil {
		serial = c.ConnectionState().PeerCertificates[0].SerialNumber
		_, clientErr = c.Read(make([]byte, 1))
	}
	c1.Close()
	return serial, <-done, clientErr
}

// The Manager's per-identity Sources drive the mTLS configs: a renewed
// certificate is presented from the next handshake on, and once the
// certificate has expired with the CA down, handshakes fail instead of
// presenting it.
func TestManagerSourcesInHandshakes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := newLocalCA(t, time.Hour)
		var caDown atomic.Bool
		m, err := identity.NewManager(identity.ManagerConfig{
			Fetcher: identity.FetcherFunc(func(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
				if caDown.Load() {
					return nil, nil, errors.New("CA down")
				}
				return ca.Fetch(ctx, id)
			}),
			IdleTimeout: -1,
		})
		require.NoError(t, err)
		server := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/server")
		client := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/client")
		serverConf := identity.ServerTLSConfig(m.Source(server))
		clientConf := identity.ClientTLSConfig(m.Source(client), server)
		runManager(t, m)
		require.NoError(t, m.WaitReady(t.Context()))

		first, serr, cerr := pipeHandshake(t.Context(), serverConf, clientConf)
		require.NoError(t, serr)
		require.NoError(t, cerr)

		time.Sleep(31 * time.Minute) // past half-life
		synctest.Wait()
		second, serr, cerr := pipeHandshake(t.Context(), serverConf, clientConf)
		require.NoError(t, serr)
		require.NoError(t, cerr)
		assert.NotEqual(t, first, second, "the renewed certificate is presented")

		caDown.Store(true)
		time.Sleep(50 * time.Minute) // the second certificate is still valid
		synctest.Wait()
		third, serr, cerr := pipeHandshake(t.Context(), serverConf, clientConf)
		require.NoError(t, serr)
		require.NoError(t, cerr)
		assert.Equal(t, second, third, "the old certificate is served while renewal fails")

		time.Sleep(time.Hour) // now expired
		synctest.Wait()
		_, serr, cerr = pipeHandshake(t.Context(), serverConf, clientConf)
		require.Error(t, cerr)
		require.ErrorIs(t, serr, identity.ErrExpired)
	})
}
