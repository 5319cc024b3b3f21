// Azure Front Door (Standard or Premium) in front of Model Gateway data planes.
//
// One origin per cluster or region: the HTTPS host of the ingress in front of its data planes
// (deploy/kubernetes/components/front-door). Front Door probes each with GET /readyz over HTTPS
// — 200 once the data planes there have a configuration snapshot — and sends requests only to
// origins whose probes pass. Its profile id (output `frontDoorId`) is what the ingress requires
// in X-Azure-FDID: set it in deploy/kubernetes/components/front-door/ingress.yaml. The data
// plane does not check X-Azure-FDID itself (not implemented yet); the ingress does, and the
// data planes' NetworkPolicy admits only the ingress controller.
//
// Deploy: az deployment group create -g <rg> -f deploy/azure/front-door.bicep \
//   -p originHostNames='["gw-eastus.example.com","gw-westeurope.example.com"]'
// Not compiled by CI (no Bicep compiler is installable from the registries CI reaches).

@description('Name of the Front Door profile.')
param profileName string = 'modelgw'

@description('Standard_AzureFrontDoor, or Premium_AzureFrontDoor for Private Link origins.')
@allowed(['Standard_AzureFrontDoor', 'Premium_AzureFrontDoor'])
param sku string = 'Standard_AzureFrontDoor'

@description('HTTPS host names of the ingresses in front of the data planes, one per cluster or region.')
param originHostNames array

@description('Longest wait for an origin\'s response headers, in seconds (16–240). Non-streamed completions send their headers only when complete: a longer one cannot pass Front Door, so clients should stream long generations.')
@minValue(16)
@maxValue(240)
param originResponseTimeoutSeconds int = 240

resource profile 'Microsoft.Cdn/profiles@2024-02-01' = {
  name: profileName
  location: 'global'
  sku: { name: sku }
  properties: {
    originResponseTimeoutSeconds: originResponseTimeoutSeconds
  }
}

resource endpoint 'Microsoft.Cdn/profiles/afdEndpoints@2024-02-01' = {
  parent: profile
  name: '${profileName}-gateway'
  location: 'global'
  properties: { enabledState: 'Enabled' }
}

resource originGroup 'Microsoft.Cdn/profiles/originGroups@2024-02-01' = {
  parent: profile
  name: 'data-planes'
  properties: {
    // Only 200 counts as healthy; /readyz answers 503 until a snapshot is applied.
    healthProbeSettings: {
      probePath: '/readyz'
      probeProtocol: 'Https'
      probeRequestType: 'GET'
      probeIntervalInSeconds: 10
    }
    loadBalancingSettings: {
      sampleSize: 4
      successfulSamplesRequired: 3
      additionalLatencyInMilliseconds: 50
    }
    // No session affinity: any data plane serves any request.
    sessionAffinityState: 'Disabled'
  }
}

resource origins 'Microsoft.Cdn/profiles/originGroups/origins@2024-02-01' = [for (host, i) in originHostNames: {
  parent: originGroup
  name: 'data-planes-${i}'
  properties: {
    hostName: host
    originHostHeader: host
    httpsPort: 443
    httpPort: 80
    priority: 1
    weight: 1000
    enforceCertificateNameCheck: true
    enabledState: 'Enabled'
  }
}]

resource route 'Microsoft.Cdn/profiles/afdEndpoints/routes@2024-02-01' = {
  parent: endpoint
  name: 'gateway'
  dependsOn: [origins]
  properties: {
    originGroup: { id: originGroup.id }
    supportedProtocols: ['Https']
    patternsToMatch: ['/*']
    forwardingProtocol: 'HttpsOnly'
    httpsRedirect: 'Disabled'
    linkToDefaultDomain: 'Enabled'
    // Answers are per key and per request: never cached.
    cacheConfiguration: null
  }
}

@description('The value Front Door sends in X-Azure-FDID: the ingress refuses requests without it.')
output frontDoorId string = profile.properties.frontDoorId

@description('The Gateway URL applications call (MODELGW_GATEWAY_URL).')
output gatewayUrl string = 'https://${endpoint.properties.hostName}'
