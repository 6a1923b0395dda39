package proxy

// RelayIdle exposes the idle-timeout relay to the black-box tests.
var RelayIdle = relayIdle
