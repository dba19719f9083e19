package org.alpcds.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.binary.api.IBinaryStorageSvc;
import ca.uhn.fhir.jpa.binstore.MemoryBinaryStorageSvcImpl;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.provider.JpaSystemProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.jpa.subscription.match.deliver.email.IEmailSender;
import ca.uhn.fhir.narrative.INarrativeGenerator;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.interceptor.CorsInterceptor;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import jakarta.persistence.EntityManagerFactory;
import jakarta.servlet.DispatcherType;
import jakarta.servlet.Filter;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.EnumSet;
import java.util.List;
import java.util.Properties;
import javax.sql.DataSource;
import org.apache.commons.dbcp2.BasicDataSource;
import org.eclipse.jetty.ee10.servlet.FilterHolder;
import org.eclipse.jetty.ee10.servlet.ServletContextHandler;
import org.eclipse.jetty.ee10.servlet.ServletHolder;
import org.eclipse.jetty.server.Server;
import org.hl7.fhir.r4.model.Bundle;
import org.hl7.fhir.r4.model.Meta;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.context.annotation.AnnotationConfigApplicationContext;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;
import org.springframework.web.cors.CorsConfiguration;

/**
 * A HAPI FHIR R4 JPA server for alp-cds's integration tests, configured as the hapiproject/hapi image of the same
 * HAPI version runs by default (in-memory H2, page size 20 and no maximum, search pre-fetch thresholds 13, 503, 2003,
 * all; alphanumeric client ids; referential integrity on write; CORS for any origin) with cached search results
 * never reused (docker-compose.yml sets the same). The image itself (hapi-fhir-jpaserver-starter) is not published
 * to Maven Central, so this is built from the HAPI JPA modules that are.
 *
 * <p>Usage: {@code java -Xmx1g -jar hapi-test-server.jar --port 8090 [--bind 127.0.0.1] [--token T]}. With
 * {@code --token}, every request needs {@code Authorization: Bearer T} (401 otherwise), as sekmet-fhir's bearer
 * auth does in the tests; without it the server is open, like the image. Prints {@code HAPI FHIR ready on <url>}
 * when it answers.
 */
public final class HapiTestServer {

	private HapiTestServer() {}

	public static void main(String[] args) throws Exception {
		int port = 8090;
		String bind = "127.0.0.1";
		String token = null;
		for (int i = 0; i < args.length; i++) {
			switch (args[i]) {
				case "--port" -> port = Integer.parseInt(args[++i]);
				case "--bind" -> bind = args[++i];
				case "--token" -> token = args[++i];
				default -> throw new IllegalArgumentException("unknown argument: " + args[i]);
			}
		}
		AnnotationConfigApplicationContext spring = new AnnotationConfigApplicationContext(Config.class);
		RestfulServer fhir = spring.getBean(RestfulServer.class);

		Server jetty = new Server(new InetSocketAddress(bind, port));
		ServletContextHandler context = new ServletContextHandler();
		context.setContextPath("/");
		if (token != null) {
			context.addFilter(new FilterHolder(bearerOnly(token)), "/fhir/*", EnumSet.of(DispatcherType.REQUEST));
		}
		ServletHolder holder = new ServletHolder(fhir);
		holder.setInitOrder(1);
		context.addServlet(holder, "/fhir/*");
		jetty.setHandler(context);
		jetty.setStopAtShutdown(true);
		Runtime.getRuntime().addShutdownHook(new Thread(spring::close));
		jetty.start();
		System.out.println("HAPI FHIR ready on http://" + bind + ":" + port + "/fhir");
		System.out.flush();
		jetty.join();
	}

	/** A request without the bearer token gets a 401 OperationOutcome (CORS preflights pass). */
	static Filter bearerOnly(String token) {
		String expected = "Bearer " + token;
		return (request, response, chain) -> {
			HttpServletRequest http = (HttpServletRequest) request;
			if ("OPTIONS".equals(http.getMethod()) || expected.equals(http.getHeader("Authorization"))) {
				chain.doFilter(request, response);
				return;
			}
			HttpServletResponse out = (HttpServletResponse) response;
			out.setStatus(401);
			out.setContentType("application/fhir+json");
			out.setHeader("WWW-Authenticate", "Bearer");
			out.getOutputStream()
					.write(("{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":\"error\","
									+ "\"code\":\"login\",\"diagnostics\":\"a valid bearer token is required\"}]}")
							.getBytes(StandardCharsets.UTF_8));
		};
	}

	@Configuration
	@Import({
		JpaR4Config.class,
		HapiJpaConfig.class,
		JpaBatch2Config.class,
		Batch2JobsConfig.class,
		SubscriptionChannelConfig.class,
		ThreadPoolFactoryConfig.class
	})
	public static class Config {

		@Bean
		public DataSource dataSource() {
			BasicDataSource source = new BasicDataSource();
			source.setDriverClassName("org.h2.Driver");
			source.setUrl("jdbc:h2:mem:hapi;DB_CLOSE_DELAY=-1");
			source.setUsername("sa");
			source.setPassword("");
			source.setMaxTotal(10);
			return source;
		}

		@Bean
		public JpaStorageSettings storageSettings() {
			JpaStorageSettings settings = new JpaStorageSettings();
			// the image's defaults (hapi-fhir-jpaserver-starter application.yaml and AppProperties)
			settings.setSearchPreFetchThresholds(List.of(13, 503, 2003, -1));
			settings.setFetchSizeDefaultMaximum(Integer.MAX_VALUE);
			settings.setExpireSearchResultsAfterMillis(60L * 60 * 1000);
			settings.setAllowExternalReferences(false);
			settings.setResourceClientIdStrategy(JpaStorageSettings.ClientIdStrategyEnum.ALPHANUMERIC);
			settings.setEnforceReferentialIntegrityOnWrite(true);
			settings.setEnforceReferentialIntegrityOnDelete(true);
			settings.setTreatReferencesAsLogical(new java.util.HashSet<>(List.of(
					"http://terminology.hl7.org/*",
					"https://terminology.hl7.org/*",
					"http://snomed.info/*",
					"https://snomed.info/*",
					"http://unitsofmeasure.org/*",
					"https://unitsofmeasure.org/*",
					"http://loinc.org/*",
					"https://loinc.org/*")));
			// docker-compose.yml: hapi.fhir.reuse_cached_search_results_millis=-1 (fresh data is searchable at once)
			settings.setReuseCachedSearchResultsForMillis(null);
			return settings;
		}

		@Bean
		public PartitionSettings partitionSettings() {
			return new PartitionSettings();
		}

		@Bean
		public SubscriptionSettings subscriptionSettings() {
			return new SubscriptionSettings();
		}

		@Bean
		public IBinaryStorageSvc binaryStorage() {
			return new MemoryBinaryStorageSvcImpl();
		}

		@Bean
		public IEmailSender emailSender() {
			return email -> {};
		}

		@Bean
		@Primary
		public LocalContainerEntityManagerFactoryBean entityManagerFactory(
				ConfigurableListableBeanFactory beans,
				FhirContext fhirContext,
				JpaStorageSettings storageSettings,
				DataSource dataSource) {
			LocalContainerEntityManagerFactoryBean factory =
					HapiEntityManagerFactoryUtil.newEntityManagerFactory(beans, fhirContext, storageSettings);
			factory.setPersistenceUnitName("HAPI_PU");
			factory.setDataSource(dataSource);
			Properties jpa = new Properties();
			jpa.put("hibernate.dialect", HapiFhirH2Dialect.class.getName());
			jpa.put("hibernate.hbm2ddl.auto", "update");
			jpa.put("hibernate.format_sql", "false");
			jpa.put("hibernate.show_sql", "false");
			jpa.put("hibernate.jdbc.batch_size", "20");
			jpa.put("hibernate.cache.use_query_cache", "false");
			jpa.put("hibernate.cache.use_second_level_cache", "false");
			jpa.put("hibernate.search.enabled", "false");
			factory.setJpaProperties(jpa);
			return factory;
		}

		@Bean
		@Primary
		public JpaTransactionManager transactionManager(EntityManagerFactory entityManagerFactory) {
			JpaTransactionManager manager = new JpaTransactionManager();
			manager.setEntityManagerFactory(entityManagerFactory);
			return manager;
		}

		@Bean
		public RestfulServer restfulServer(
				IFhirSystemDao<Bundle, Meta> systemDao,
				JpaSystemProvider<Bundle, Meta> systemProvider,
				ResourceProviderFactory resourceProviders,
				DatabaseBackedPagingProvider paging,
				JpaStorageSettings storageSettings,
				ISearchParamRegistry searchParams,
				IValidationSupport validation) {
			FhirContext context = systemDao.getContext();
			context.setNarrativeGenerator((INarrativeGenerator) null);
			RestfulServer server = new RestfulServer(context);
			server.registerProviders(resourceProviders.createProviders());
			server.registerProvider(systemProvider);
			JpaCapabilityStatementProvider capabilities = new JpaCapabilityStatementProvider(
					server, systemDao, storageSettings, searchParams, validation);
			capabilities.setImplementationDescription("HAPI FHIR R4 Server (alp-cds tests)");
			server.setServerConformanceProvider(capabilities);
			paging.setDefaultPageSize(20);
			paging.setMaximumPageSize(Integer.MAX_VALUE);
			server.setPagingProvider(paging);
			server.setDefaultPrettyPrint(true);
			server.setDefaultResponseEncoding(ca.uhn.fhir.rest.api.EncodingEnum.JSON);
			server.registerInterceptor(cors());
			return server;
		}

		private static CorsInterceptor cors() {
			CorsConfiguration config = new CorsConfiguration();
			for (String header : List.of(
					"Origin", "Accept", "Content-Type", "Authorization", "Cache-Control", "X-Requested-With", "Prefer")) {
				config.addAllowedHeader(header);
			}
			config.addAllowedOriginPattern("*");
			config.addExposedHeader("Location");
			config.addExposedHeader("Content-Location");
			config.setAllowedMethods(List.of("GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD"));
			config.setAllowCredentials(true);
			return new CorsInterceptor(config);
		}
	}
}
