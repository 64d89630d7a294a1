// Package integration drives the real appliance binary through its CLI in
// network namespaces it creates: curl, iperf3, ping, dig and small Go
// helpers run in a container namespace whose traffic the appliance relays
// to a server namespace. The tests need root and the build tag:
//
//	go test -tags integration -v ./integration/
//
// Start with TestMain and newTopo in the test files.
package integration
