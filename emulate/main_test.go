package emulate

import (
	"testing"

	"github.com/nsappliance/appliance/internal/leakcheck"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }
